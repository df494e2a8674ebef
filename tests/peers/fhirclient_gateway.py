"""Talks to Switchboard's FHIR gateway with SMART Health IT's `fhirclient` (a FHIR client
nobody here wrote): reads a Patient, the CapabilityStatement and searches Slots, parsing every
answer into fhirclient's typed models (which refuse malformed resources). Prints a JSON summary.

usage: fhirclient_gateway.py FHIR_BASE ACCESS_TOKEN PATIENT_ID
"""
import json
import sys

from fhirclient import server as fserver
from fhirclient.models import capabilitystatement, patient, slot


class Bearer:
    def __init__(self, token):
        self.token = token

    def can_sign_headers(self):
        return True

    def signed_headers(self, headers):
        headers["Authorization"] = f"Bearer {self.token}"
        return headers


def main() -> None:
    base, token, patient_id = sys.argv[1:4]
    srv = fserver.FHIRServer(None, base_uri=base)
    srv.auth = Bearer(token)
    p = patient.Patient.read(patient_id, srv)
    cap = capabilitystatement.CapabilityStatement.read_from("metadata", srv)
    bundle = slot.Slot.where(struct={"status": "free", "_count": "5"}).perform(srv)
    links = [l.url for l in (bundle.link or [])]
    print(json.dumps({
        "patient_id": p.id,
        "family": p.name[0].family if p.name else None,
        "fhir_version": cap.fhirVersion,
        "slots": len(bundle.entry or []),
        "slot_urls": [e.fullUrl for e in (bundle.entry or [])],
        "links": links,
    }))


if __name__ == "__main__":
    main()
