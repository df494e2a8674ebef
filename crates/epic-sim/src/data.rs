//! A deterministic, generated data set: patients, practitioners, locations, one schedule per
//! practitioner and weeks of slots, plus a few booked appointments. The same seed gives the same
//! data, so tests and demos can name real ids.

use serde_json::{Value, json};
use std::collections::BTreeMap;

const GIVEN: &[&str] = &[
    "Ava", "Liam", "Noah", "Emma", "Olivia", "Mateo", "Sofia", "Kai", "Amara", "Ravi", "Mei",
    "Jonas", "Leila", "Tomas", "Ines", "Yuki", "Omar", "Nora", "Eli", "Zara", "Hugo", "Lena",
    "Ada", "Felix",
];
const MIDDLE: &[&str] = &["P", "J", "M", "A", "R", "", "", "L"];
const FAMILY: &[&str] = &[
    "Spinder",
    "Oosman",
    "Nakamura",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Haddad",
    "Kowalski",
    "Silva",
    "Brennan",
    "Varga",
    "Petrov",
    "Achebe",
    "Iqbal",
    "Novak",
    "Castillo",
    "Fischer",
    "Duarte",
    "Ferrari",
    "Jensen",
];
const DEPARTMENTS: &[&str] = &[
    "Radiology",
    "Cardiology",
    "Family Medicine",
    "Pediatrics",
    "Oncology",
    "Orthopedics",
    "Dermatology",
    "Neurology",
];

/// splitmix64: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % (n.max(1) as u64)).unwrap_or(0)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn id(&mut self) -> String {
        format!("e{:016x}{:08x}", self.next_u64(), self.next_u64() as u32)
    }
}

/// Sizes of the generated set.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub patients: usize,
    pub practitioners: usize,
    pub days: i64,
    pub slots_per_day: i64,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            patients: 300,
            practitioners: 40,
            days: 21,
            slots_per_day: 8,
        }
    }
}

/// Every resource by type and id, as FHIR R4 JSON.
#[derive(Debug, Clone, Default)]
pub struct DataSet {
    pub resources: BTreeMap<&'static str, BTreeMap<String, Value>>,
}

pub const TYPES: &[&str] = &[
    "Patient",
    "Practitioner",
    "Location",
    "Schedule",
    "Slot",
    "Appointment",
];

impl DataSet {
    /// Generates the set for `seed`, with slots starting on `start_day` (midnight UTC, ms).
    #[must_use]
    pub fn generate(seed: u64, sizes: Sizes, start_day_ms: i64) -> Self {
        let mut rng = Rng::new(seed);
        let mut d = Self::default();
        for t in TYPES {
            d.resources.insert(t, BTreeMap::new());
        }
        let mut locations = Vec::new();
        for (i, dept) in DEPARTMENTS.iter().enumerate() {
            let id = rng.id();
            locations.push(id.clone());
            d.insert(json!({
                "resourceType": "Location", "id": id, "status": "active", "name": dept, "mode": "instance",
                "identifier": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.686980", "value": format!("DEP{}", 1000 + i)}],
            }));
        }
        for i in 0..sizes.patients {
            let id = rng.id();
            let given = GIVEN[rng.below(GIVEN.len())];
            let middle = MIDDLE[rng.below(MIDDLE.len())];
            let family = FAMILY[rng.below(FAMILY.len())];
            let mut given_names = vec![given];
            if !middle.is_empty() {
                given_names.push(middle);
            }
            let year = 1940 + rng.below(80);
            d.insert(json!({
                "resourceType": "Patient", "id": id, "active": true,
                "identifier": [{"use": "usual", "system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "value": format!("Z{}", 100_000 + i)}],
                "name": [{"use": "official", "family": family, "given": given_names, "text": format!("{} {}", given_names.join(" "), family)}],
                "gender": if rng.below(2) == 0 { "female" } else { "male" },
                "birthDate": format!("{year:04}-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28)),
            }));
        }
        let mut schedules = Vec::new();
        for i in 0..sizes.practitioners {
            let id = rng.id();
            let given = GIVEN[rng.below(GIVEN.len())];
            let family = FAMILY[rng.below(FAMILY.len())];
            d.insert(json!({
                "resourceType": "Practitioner", "id": id, "active": true,
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": format!("{}", 1_000_000_000u64 + i as u64 * 7919)}],
                "name": [{"use": "usual", "family": family, "given": [given], "prefix": ["Dr."], "text": format!("Dr. {given} {family}")}],
            }));
            let location = locations[i % locations.len()].clone();
            let schedule_id = rng.id();
            schedules.push((schedule_id.clone(), id.clone(), location.clone()));
            d.insert(json!({
                "resourceType": "Schedule", "id": schedule_id, "active": true,
                "actor": [{"reference": format!("Practitioner/{id}"), "display": format!("Dr. {given} {family}")},
                          {"reference": format!("Location/{location}")}],
                "planningHorizon": {"start": iso(start_day_ms), "end": iso(start_day_ms + sizes.days * 86_400_000)},
            }));
        }
        let patient_ids: Vec<String> = d.resources["Patient"].keys().cloned().collect();
        for (schedule_id, practitioner, location) in &schedules {
            for day in 0..sizes.days {
                for s in 0..sizes.slots_per_day {
                    let start = start_day_ms + day * 86_400_000 + (8 * 3_600_000) + s * 1_800_000;
                    let slot_id = rng.id();
                    let booked = rng.unit() < 0.1;
                    d.insert(json!({
                        "resourceType": "Slot", "id": slot_id,
                        "schedule": {"reference": format!("Schedule/{schedule_id}")},
                        "status": if booked { "busy" } else { "free" },
                        "start": iso(start), "end": iso(start + 1_800_000),
                    }));
                    if booked {
                        let patient = &patient_ids[rng.below(patient_ids.len())];
                        let appt = rng.id();
                        d.insert(appointment(
                            &appt,
                            &slot_id,
                            patient,
                            practitioner,
                            location,
                            start,
                            "booked",
                        ));
                    }
                }
            }
        }
        d
    }

    pub fn insert(&mut self, r: Value) {
        let (Some(t), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) else {
            return;
        };
        let Some(t) = TYPES.iter().find(|x| **x == t) else {
            return;
        };
        let id = id.to_owned();
        self.resources.entry(t).or_default().insert(id, r);
    }

    #[must_use]
    pub fn get(&self, t: &str, id: &str) -> Option<&Value> {
        self.resources.get(t)?.get(id)
    }
}

#[must_use]
pub fn appointment(
    id: &str,
    slot: &str,
    patient: &str,
    practitioner: &str,
    location: &str,
    start: i64,
    status: &str,
) -> Value {
    json!({
        "resourceType": "Appointment", "id": id, "status": status,
        "slot": [{"reference": format!("Slot/{slot}")}],
        "start": iso(start), "end": iso(start + 1_800_000), "minutesDuration": 30,
        "participant": [
            {"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"},
            {"actor": {"reference": format!("Practitioner/{practitioner}")}, "status": "accepted"},
            {"actor": {"reference": format!("Location/{location}")}, "status": "accepted"},
        ],
    })
}

/// RFC 3339 in UTC with a `Z`, as FHIR instants are written.
#[must_use]
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_data_and_another_seed_does_not() {
        let a = DataSet::generate(7, Sizes::default(), 1_790_000_000_000);
        let b = DataSet::generate(7, Sizes::default(), 1_790_000_000_000);
        let c = DataSet::generate(8, Sizes::default(), 1_790_000_000_000);
        assert_eq!(
            a.resources["Patient"].keys().collect::<Vec<_>>(),
            b.resources["Patient"].keys().collect::<Vec<_>>()
        );
        assert_ne!(
            a.resources["Patient"].keys().next(),
            c.resources["Patient"].keys().next()
        );
    }

    #[test]
    fn the_set_has_hundreds_of_patients_dozens_of_practitioners_and_weeks_of_slots() {
        let d = DataSet::generate(1, Sizes::default(), 1_790_000_000_000);
        assert_eq!(d.resources["Patient"].len(), 300);
        assert_eq!(d.resources["Practitioner"].len(), 40);
        assert_eq!(d.resources["Slot"].len(), 40 * 21 * 8);
        let busy = d.resources["Slot"]
            .values()
            .filter(|s| s["status"] == "busy")
            .count();
        assert_eq!(busy, d.resources["Appointment"].len());
    }
}
