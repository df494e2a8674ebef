"""Schedule sync: the sample use case of source 002, as an app builder's backend service.

It gets a token from Switchboard with its client credentials (HTTP Basic, grant_type in the
query, exactly like the Postman snippet), pulls the clinicians' Schedules and their free Slots
through the gateway (following `next` links), and books a patient's Appointment in the first free
slot. It never sees an Epic credential: the gateway holds them.

usage: schedule_sync.py SWITCHBOARD_URL GATEWAY CLIENT_ID CLIENT_SECRET PATIENT_ID
prints one JSON line: schedules, free slots seen, the booked appointment's id and location.
"""
import base64
import json
import sys

import requests

FHIR_JSON = "application/fhir+json"


def token(base, client_id, secret):
    auth = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    r = requests.post(
        f"{base}/auth/token?grant_type=client_credentials",
        headers={"Accept": "application/json",
                 "Content-Type": "application/x-www-form-urlencoded",
                 "Authorization": "Basic " + auth},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()["access_token"]


def search(session, url, limit_pages=10):
    """Yields resources of a search, following Bundle link[next] (gateway URLs)."""
    pages = 0
    while url and pages < limit_pages:
        r = session.get(url, timeout=30)
        r.raise_for_status()
        bundle = r.json()
        for e in bundle.get("entry", []):
            yield e["resource"]
        url = next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)
        pages += 1


def main():
    base, gateway, client_id, secret, patient = sys.argv[1:6]
    fhir = f"{base}/gateways/{gateway}/fhir/R4"
    s = requests.Session()
    s.headers.update({"Authorization": "Bearer " + token(base, client_id, secret), "Accept": FHIR_JSON})
    schedules = list(search(s, f"{fhir}/Schedule?_count=20", limit_pages=2))
    free = []
    for sched in schedules[:3]:
        free += list(search(s, f"{fhir}/Slot?schedule=Schedule/{sched['id']}&status=free&_count=50", limit_pages=1))
    if not free:
        sys.exit("no free slot found")
    slot = free[0]
    appt = {
        "resourceType": "Appointment",
        "status": "proposed",
        "slot": [{"reference": f"Slot/{slot['id']}"}],
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}],
    }
    r = s.post(f"{fhir}/Appointment", data=json.dumps(appt), headers={"Content-Type": FHIR_JSON}, timeout=30)
    r.raise_for_status()
    booked = r.json()
    location = r.headers.get("Location", "")
    again = s.post(f"{fhir}/Appointment", data=json.dumps(appt), headers={"Content-Type": FHIR_JSON}, timeout=30)
    print(json.dumps({
        "schedules": len(schedules),
        "free_slots": len(free),
        "slot": slot["id"],
        "appointment": booked.get("id"),
        "location": location,
        "rebooking_status": again.status_code,
    }))


if __name__ == "__main__":
    main()
