"""Parses Switchboard's AppConfig output with Python's own parsers (plistlib, xml.etree, csv) and
prints {key: value} as JSON, so a test can compare what each MDM would read. The vendor-neutral
XML is first validated against the AppConfig specification's structure (appconfig-spec.xsd) with
the xmlschema package; a document that does not conform fails with the validator's reason.

usage: appconfig_parse.py MDM FILE   (MDM: app_config_xml | workspace_one | intune | jamf)
"""
import csv
import json
import os
import plistlib
import sys
import xml.etree.ElementTree as ET

import xmlschema

SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "appconfig-spec.xsd")


def main() -> None:
    mdm, path = sys.argv[1:3]
    with open(path, "rb") as f:
        data = f.read()
    out = {}
    if mdm == "jamf":
        out = plistlib.loads(data)
    elif mdm == "intune":
        # Intune takes the dict fragment; a plist around it makes it a complete document.
        out = plistlib.loads(b'<?xml version="1.0" encoding="UTF-8"?><plist version="1.0">' + data + b"</plist>")
    elif mdm == "workspace_one":
        rows = list(csv.DictReader(data.decode().splitlines()))
        for r in rows:
            v = r["Configuration Value"]
            out[r["Configuration Key"]] = (v == "true") if r["Value Type"] == "Boolean" else v
    else:
        xmlschema.XMLSchema(SCHEMA).validate(data.decode())
        root = ET.fromstring(data)
        assert root.tag == "managedAppConfiguration", root.tag
        assert root.find("bundleId").text
        for el in root.find("dict"):
            dv = el.find("defaultValue")
            var = dv.find("deviceVariable")
            if var is not None:
                out[el.get("keyName")] = "$" + var.get("value")
            elif el.tag == "boolean":
                out[el.get("keyName")] = dv.find("value").text == "true"
            else:
                out[el.get("keyName")] = dv.find("value").text
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
