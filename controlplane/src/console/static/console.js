// Sluice console: the only script, served from /app/static/console.js (no inline script).
// Every page works without it; it adds copy buttons and Escape to cancel an edit.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(
    () => { button.textContent = "Copied"; },
    () => { button.textContent = "Select and copy"; },
  );
});
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  const input = event.target.closest("input[data-escape-resets]");
  if (!input || !input.form) return;
  input.form.reset();
  input.blur();
});
