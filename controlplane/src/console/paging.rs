//! Paging of a console list past the API's first page: the page's URL carries the API's
//! `next_cursor` under a name of its own per list (`?tokens_after=…`), so that a page with two
//! lists pages each alone, and the links are plain links (no script).

use std::future::Future;

use axum::Json;

use crate::api::html::escape;
use crate::api::{ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::problem::ApiResult;

/// At most this many pages are followed to read a whole list: its bound (a workspace's 1,000
/// sources, its tokens or members) is far below it at the largest page size.
const PAGES_MAX: usize = 1000;

/// Every item of a list operation, following its cursors: for a choice among all of them (a
/// source for an output, endpoints for a read token) and for counts past the first page.
pub async fn every<T, F, Fut>(app: &App, mut list: F) -> ApiResult<Vec<T>>
where
    F: FnMut(ApiQuery<PageQuery>) -> Fut,
    Fut: Future<Output = ApiResult<Json<Page<T>>>>,
{
    let mut items = Vec::new();
    let mut cursor = None;
    for _ in 0..PAGES_MAX {
        let Json(page) = list(ApiQuery(PageQuery {
            limit: Some(app.config.page_size_max),
            cursor: cursor.take(),
        }))
        .await?;
        items.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(items)
}

/// How many items a list operation holds in all (an overview's "how many").
pub async fn count_all<T, F, Fut>(app: &App, list: F) -> ApiResult<usize>
where
    F: FnMut(ApiQuery<PageQuery>) -> Fut,
    Fut: Future<Output = ApiResult<Json<Page<T>>>>,
{
    every(app, list).await.map(|items| items.len())
}

/// Which page of one list a console page shows.
pub struct Paging {
    /// The query parameter that carries this list's cursor.
    param: &'static str,
    /// The API's cursor of the page shown; `None` for the first page.
    cursor: Option<String>,
}

impl Paging {
    /// The page of the list named by `param` in the page's query (the first when absent).
    pub fn from_query(query: Option<&str>, param: &'static str) -> Paging {
        let cursor = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(name, _)| name == param)
            .map(|(_, value)| value.into_owned())
            .filter(|value| !value.is_empty());
        Paging { param, cursor }
    }

    /// The first page of the list named by `param`.
    pub fn first(param: &'static str) -> Paging {
        Paging {
            param,
            cursor: None,
        }
    }

    /// The API query for this page: as many items as the server gives in one page.
    pub fn query(&self, app: &App) -> ApiQuery<PageQuery> {
        ApiQuery(PageQuery {
            limit: Some(app.config.page_size_max),
            cursor: self.cursor.clone(),
        })
    }

    /// Links to the next page (when the API gave a cursor) and back to the first (when this
    /// is not it), as a small navigation under the list; `path` is the page's own path and
    /// `anchor` the id of the list's heading, so the link lands at the list.
    pub fn links(&self, path: &str, anchor: &str, next: Option<&str>) -> String {
        let mut links = Vec::new();
        if self.cursor.is_some() {
            links.push(format!(
                "<a href=\"{}#{anchor}\">First page</a>",
                escape(path)
            ));
        }
        if let Some(next) = next {
            let query: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair(self.param, next)
                .finish();
            links.push(format!(
                "<a href=\"{}?{}#{anchor}\" rel=\"next\">Next page</a>",
                escape(path),
                escape(&query)
            ));
        }
        if links.is_empty() {
            return String::new();
        }
        format!(
            "<nav class=\"pages\" aria-label=\"Pages of {anchor}\">{}</nav>",
            links.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Paging;

    #[test]
    fn each_list_reads_its_own_cursor_and_links_to_the_next_page() {
        let paging = Paging::from_query(Some("done=x&tokens_after=abc%2B1"), "tokens_after");
        assert_eq!(paging.cursor.as_deref(), Some("abc+1"));
        let links = paging.links("/app/w/a/access", "tokens", Some("n&1"));
        assert!(
            links.contains("href=\"/app/w/a/access#tokens\">First page"),
            "{links}"
        );
        assert!(links.contains("?tokens_after=n%261#tokens"), "{links}");
        let first = Paging::from_query(Some("sources_after=zz"), "tokens_after");
        assert!(first.cursor.is_none());
        assert_eq!(first.links("/p", "tokens", None), "");
    }
}
