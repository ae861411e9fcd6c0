// Checks one AsyncAPI document (the file named by the first argument) with the tools a user of
// the document would use: @asyncapi/parser 3 and the official 3.0.0 JSON Schema from
// @asyncapi/specs, checked with Ajv. Prints one JSON line:
// {"parser": [{severity, code, message, path}], "schema": [{instancePath, message}]}
// where parser severity is 0 error, 1 warning, 2 information, 3 hint. Exits 0 whatever it finds:
// tests/asyncapi.rs judges the findings.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Parser } from '@asyncapi/parser';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import yaml from 'js-yaml';

const require = createRequire(import.meta.url);
const text = readFileSync(process.argv[2], 'utf8');

const parser = new Parser();
const { diagnostics } = await parser.parse(text);
const found = diagnostics.map((d) => ({
  severity: d.severity,
  code: String(d.code),
  message: d.message,
  path: d.path.join('/'),
}));

// The document as a value for the schema check: the export is JSON or YAML.
let value;
try {
  value = JSON.parse(text);
} catch {
  value = yaml.load(text);
}
const schema = require('@asyncapi/specs/schemas/3.0.0-without-$id.json');
const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
const validate = ajv.compile(schema);
const schemaErrors = validate(value)
  ? []
  : validate.errors.map((e) => ({ instancePath: e.instancePath, message: e.message }));

console.log(JSON.stringify({ parser: found, schema: schemaErrors }));
