//! The storage and queue suite. Every test runs on SQLite and on PostgreSQL (when
//! `SWITCHBOARD_TEST_POSTGRES_URL` is set), against a fresh database each.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

use std::collections::HashSet;
use std::sync::Arc;
use switchboard_domain::audit::{AuditEvent, ChainVerifier};
use switchboard_store::{
    AuditFilter, JobFilter, NewJob, SecretRow, SessionRow, Store, StoreError, TokenRow, UserRow,
    store_test,
};

fn user(id: &str, username: &str, role: &str) -> UserRow {
    UserRow {
        id: id.into(),
        username: username.into(),
        display_name: format!("User {username}"),
        role: role.into(),
        password_hash: Some("$argon2id$stub".into()),
        disabled: false,
        created_at: 1,
        updated_at: 1,
    }
}

fn token(id: &str, user_id: &str, digest: &[u8]) -> TokenRow {
    TokenRow {
        id: id.into(),
        user_id: user_id.into(),
        name: "ci".into(),
        digest: digest.to_vec(),
        prefix: "sb_abcd".into(),
        role: None,
        created_at: 10,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    }
}

fn job(kind: &str, dedupe: Option<&str>, run_at: i64) -> NewJob {
    NewJob {
        kind: kind.into(),
        payload: serde_json::json!({"n": run_at}),
        dedupe_key: dedupe.map(str::to_owned),
        run_at,
        max_attempts: 3,
        now: 0,
    }
}

store_test!(
    users_are_stored_read_back_and_unique_by_username,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        tx.insert_user(&user("u1", "alice", "admin")).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        let err = tx
            .insert_user(&user("u2", "alice", "operator"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        drop(tx);

        let mut tx = store.read().await.unwrap();
        let got = tx.get_user_by_username("alice").await.unwrap().unwrap();
        assert_eq!(got, user("u1", "alice", "admin"));
        assert_eq!(tx.count_admins().await.unwrap(), 1);
        assert!(tx.get_user("u2").await.unwrap().is_none());
    }
);

store_test!(
    a_rolled_back_transaction_leaves_nothing_behind,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        tx.insert_user(&user("u1", "bob", "operator"))
            .await
            .unwrap();
        tx.append_audit(&AuditEvent::new("system", "user.created", "user:u1"), 5)
            .await
            .unwrap();
        tx.enqueue_job(&job("webhook.deliver", None, 0))
            .await
            .unwrap();
        drop(tx);

        let mut tx = store.read().await.unwrap();
        assert!(tx.list_users().await.unwrap().is_empty());
        assert!(
            tx.list_audit(&AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .unwrap()
            .is_empty()
        );
        assert_eq!(tx.job_counts(0).await.unwrap().queued, 0);
    }
);

store_test!(
    tokens_are_found_by_digest_with_their_user_and_revoked_once,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        tx.insert_user(&user("u1", "carol", "auditor"))
            .await
            .unwrap();
        tx.insert_token(&token("t1", "u1", b"digest-1"))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        let (t, u) = tx.find_token_by_digest(b"digest-1").await.unwrap().unwrap();
        assert_eq!(t.id, "t1");
        assert_eq!(u.username, "carol");
        assert!(tx.find_token_by_digest(b"other").await.unwrap().is_none());
        assert!(tx.revoke_token("t1", 99).await.unwrap());
        assert!(
            !tx.revoke_token("t1", 100).await.unwrap(),
            "a second revoke changes nothing"
        );
        tx.commit().await.unwrap();

        let mut tx = store.read().await.unwrap();
        assert_eq!(
            tx.get_token("t1").await.unwrap().unwrap().revoked_at,
            Some(99)
        );
        assert_eq!(tx.list_tokens(Some("u1")).await.unwrap().len(), 1);
        assert_eq!(tx.list_tokens(Some("nobody")).await.unwrap().len(), 0);
    }
);

store_test!(
    sessions_expire_and_revoke,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        tx.insert_user(&user("u1", "dan", "operator"))
            .await
            .unwrap();
        for (id, exp) in [("s1", 100), ("s2", 1_000)] {
            tx.insert_session(&SessionRow {
                id: id.into(),
                digest: id.as_bytes().to_vec(),
                user_id: "u1".into(),
                csrf: "c".into(),
                role: None,
                created_at: 1,
                expires_at: exp,
                revoked_at: None,
            })
            .await
            .unwrap();
        }
        assert_eq!(tx.delete_expired_sessions(500).await.unwrap(), 1);
        assert_eq!(tx.revoke_sessions_of_user("u1", 501).await.unwrap(), 1);
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        assert!(tx.find_session_by_digest(b"s1").await.unwrap().is_none());
        let (s, _) = tx.find_session_by_digest(b"s2").await.unwrap().unwrap();
        assert_eq!(s.revoked_at, Some(501));
    }
);

store_test!(
    secrets_upsert_in_place,
    |store: Arc<dyn Store>| async move {
        let mut s = SecretRow {
            id: "k1".into(),
            owner: "env:1".into(),
            purpose: "private_key".into(),
            key_id: "mk1".into(),
            nonce: vec![1; 12],
            ciphertext: vec![2; 40],
            created_at: 1,
            updated_at: 1,
        };
        let mut tx = store.begin().await.unwrap();
        tx.put_secret(&s).await.unwrap();
        s.key_id = "mk2".into();
        s.ciphertext = vec![3; 40];
        s.updated_at = 2;
        tx.put_secret(&s).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        let all = tx.list_secrets().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], SecretRow { created_at: 1, ..s });
    }
);

/// Walks every audit chain from its start, checks each link and that it ends at its head;
/// answers how many entries there are.
async fn verified_audit_entries(store: &Arc<dyn Store>) -> usize {
    let mut tx = store.read().await.unwrap();
    let mut n = 0;
    for head in tx.audit_heads().await.unwrap() {
        let entries = tx.audit_chain_page(head.chain, 0, 1000).await.unwrap();
        let mut v = ChainVerifier::new(head.chain);
        for e in &entries {
            v.feed(e).unwrap();
        }
        n += v.finish(head.seq, &head.hash).unwrap();
    }
    usize::try_from(n).unwrap()
}

/// Two replicas (two stores on one database) append in turn: each one's knowledge of a chain's
/// head goes stale whenever the other appends, and every chain must still link up. A rolled-back
/// append leaves nothing; a transaction may append twice, before or after its other writes.
async fn two_replicas_append(db: switchboard_store::testing::TestDb) {
    let other = switchboard_store::connect(&db.url, &switchboard_store::ConnectOptions::default())
        .await
        .unwrap();
    let stores = [Arc::clone(&db.store), other];
    let mut expected = 0;
    for i in 0..8_i64 {
        let store = &stores[usize::try_from((i / 2) % 2).unwrap()];
        let mut tx = store.begin().await.unwrap();
        let ev = AuditEvent::new("system", "test.appended", format!("t:{i}"));
        tx.append_audit(&ev, 100 + i).await.unwrap();
        if i % 3 == 0 {
            tx.write_all(&[switchboard_store::Write::DeleteSecret(format!("s{i}"))])
                .await
                .unwrap();
            tx.append_audit(&ev, 100 + i).await.unwrap();
            expected += 1;
        }
        if i == 5 {
            drop(tx);
            continue;
        }
        tx.commit().await.unwrap();
        expected += 1;
    }
    if db.store.backend() == switchboard_store::Backend::Postgres {
        // Two transactions of one replica open at once append to two chains, neither waits.
        let mut a = db.store.begin().await.unwrap();
        let mut b = db.store.begin().await.unwrap();
        for tx in [&mut a, &mut b] {
            tx.append_audit(&AuditEvent::new("system", "test.parallel", ""), 200)
                .await
                .unwrap();
            tx.write_all(&[]).await.unwrap();
        }
        a.commit().await.unwrap();
        b.commit().await.unwrap();
        expected += 2;
        let mut tx = db.store.read().await.unwrap();
        let parallel = tx
            .list_audit(&AuditFilter {
                action: Some("test.parallel".into()),
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(parallel.len(), 2);
        assert_ne!(parallel[0].chain, parallel[1].chain);
    }
    assert_eq!(verified_audit_entries(&db.store).await, expected);
    stores[1].close().await;
}

#[tokio::test]
async fn audit_appends_of_two_replicas_link_up_on_sqlite() {
    two_replicas_append(switchboard_store::testing::sqlite().await).await;
}

#[tokio::test]
async fn audit_appends_of_two_replicas_link_up_on_postgres() {
    let Some(db) =
        switchboard_store::testing::postgres("audit_appends_of_two_replicas_link_up_on_postgres")
            .await
    else {
        return;
    };
    let store = Arc::clone(&db.store);
    two_replicas_append(db).await;
    store.close().await;
}

store_test!(audit_entries_chain_and_verify_and_filter, |store: Arc<
    dyn Store,
>| async move {
    for i in 0..6 {
        let mut tx = store.begin().await.unwrap();
        let ev = AuditEvent::new(
            format!("user:u{}", i % 2),
            if i < 3 {
                "user.created"
            } else {
                "token.revoked"
            },
            format!("t:{i}"),
        )
        .with_details(serde_json::json!({"i": i}));
        tx.append_audit(&ev, 1000 + i).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(verified_audit_entries(&store).await, 6);
    let mut tx = store.read().await.unwrap();
    assert_eq!(tx.audit_heads().await.unwrap().len(), 16);
    let only = tx
        .list_audit(&AuditFilter {
            action: Some("token.".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(only.len(), 3);
    assert!(only.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let by_actor = tx
        .list_audit(&AuditFilter {
            actor: Some("user:u1".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_actor.len(), 3);
    let window = tx
        .list_audit(&AuditFilter {
            from_ms: Some(1002),
            to_ms: Some(1004),
            oldest_first: true,
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        window.iter().map(|r| r.at).collect::<Vec<_>>(),
        vec![1002, 1003]
    );
    assert_eq!(window[0].details, serde_json::json!({"i": 2}));
});

store_test!(
    dedupe_keys_keep_one_queued_job,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        assert!(
            tx.enqueue_job(&job("a.b", Some("k"), 0))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            tx.enqueue_job(&job("a.b", Some("k"), 0))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            tx.enqueue_job(&job("a.b", None, 0))
                .await
                .unwrap()
                .is_some()
        );
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        assert_eq!(tx.job_counts(0).await.unwrap().queued, 2);
    }
);

store_test!(
    claims_lease_due_jobs_and_an_expired_lease_lets_another_worker_run_it,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        tx.enqueue_job(&job("a.b", None, 0)).await.unwrap();
        tx.enqueue_job(&job("a.b", None, 5_000)).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        let got = tx.claim_jobs("w1", 100, 1_000, 10).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(got.len(), 1, "only the due job");
        assert_eq!(got[0].attempts, 1);
        let id = got[0].id;

        let mut tx = store.begin().await.unwrap();
        assert!(
            tx.claim_jobs("w2", 500, 1_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "leased"
        );
        let again = tx.claim_jobs("w2", 1_200, 1_000, 10).await.unwrap();
        assert_eq!(
            again.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![id],
            "lease ran out"
        );
        assert_eq!(again[0].attempts, 2);
        assert!(
            !tx.complete_job(id, "w1").await.unwrap(),
            "w1 lost its lease"
        );
        assert!(tx.complete_job(id, "w2").await.unwrap());
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        assert!(tx.get_job(id).await.unwrap().is_none());
    }
);

store_test!(
    failed_jobs_are_rescheduled_then_buried_and_operators_revive_or_discard_them,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        let a = tx
            .enqueue_job(&job("a.b", Some("x"), 0))
            .await
            .unwrap()
            .unwrap();
        let b = tx.enqueue_job(&job("a.b", None, 0)).await.unwrap().unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        tx.claim_jobs("w", 10, 1_000, 10).await.unwrap();
        assert!(
            tx.retry_job_later(a, "w", 2_000, "503 from Epic", 11)
                .await
                .unwrap()
        );
        assert!(tx.bury_job(b, "w", "400 bad request", 11).await.unwrap());
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        let ja = tx.get_job(a).await.unwrap().unwrap();
        assert_eq!(
            (
                ja.state.as_str(),
                ja.run_at,
                ja.lease_owner.clone(),
                ja.last_error.as_deref()
            ),
            ("queued", 2_000, None, Some("503 from Epic"))
        );
        let counts = tx.job_counts(20).await.unwrap();
        assert_eq!((counts.queued, counts.running, counts.dead), (1, 0, 1));
        let dead = tx
            .list_jobs(&JobFilter {
                state: Some("dead".into()),
                kind: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(dead.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b]);
        assert_eq!(dead[0].last_error.as_deref(), Some("400 bad request"));
        assert!(
            !tx.revive_dead_job(a, 30).await.unwrap(),
            "only dead jobs revive"
        );
        assert!(tx.revive_dead_job(b, 30).await.unwrap());
        let revived = tx.get_job(b).await.unwrap().unwrap();
        assert_eq!((revived.state.as_str(), revived.attempts), ("queued", 0));
        assert!(!tx.discard_dead_job(b).await.unwrap(), "no longer dead");
        tx.commit().await.unwrap();
    }
);

store_test!(concurrent_claimers_never_share_a_job, |store: Arc<
    dyn Store,
>| async move {
    let mut tx = store.begin().await.unwrap();
    for i in 0..200 {
        tx.enqueue_job(&job("a.b", None, i % 3)).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let mut tx = store.begin().await.unwrap();
                let got = tx
                    .claim_jobs(&format!("w{w}"), 10, 60_000, 7)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                if got.is_empty() {
                    break mine;
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), 200);
});

store_test!(migrations_report_current_after_migrate, |store: Arc<
    dyn Store,
>| async move {
    let status = store.migration_status().await.unwrap();
    assert!(status.is_current(), "{status:?}");
    assert!(status.pending().is_empty());
    store.ping().await.unwrap();
});

store_test!(
    key_sets_signing_keys_and_environments_round_trip,
    |store: Arc<dyn Store>| async move {
        use switchboard_store::{EnvironmentRow, KeySetRow, SigningKeyRow};
        let ks = KeySetRow {
            id: "ks_1".into(),
            owner: "epic_environment:e1".into(),
            alg: "RS384".into(),
            publish_delay_secs: 600,
            rotate_every_days: Some(90),
            next_rotation_at: Some(5_000),
            created_at: 1,
        };
        let key = |kid: &str, state: &str, at: i64| SigningKeyRow {
            kid: kid.into(),
            key_set_id: "ks_1".into(),
            alg: "RS384".into(),
            public_jwk: "{}".into(),
            private_secret: format!("secret-{kid}"),
            state: state.into(),
            created_at: at,
            activate_after: at,
            activated_at: None,
            retiring_at: None,
            retired_at: None,
            last_used_at: None,
        };
        let env = EnvironmentRow {
            id: "e1".into(),
            name: "PRD".into(),
            kind: "production".into(),
            interconnect_url: "https://epic.example".into(),
            instance: "interconnect-prd".into(),
            token_url_override: None,
            client_id: "c1".into(),
            apps: r#"["Rover"]"#.into(),
            basic_username: None,
            basic_password_ref: None,
            epic_client_id: None,
            timeout_ms: 10_000,
            rate_limit_per_sec: Some(20),
            ca_bundle: None,
            key_set_id: "ks_1".into(),
            created_at: 1,
            updated_at: 1,
        };
        let mut tx = store.begin().await.unwrap();
        tx.insert_key_set(&ks).await.unwrap();
        tx.insert_signing_key(&key("k1", "active", 10))
            .await
            .unwrap();
        tx.insert_signing_key(&key("k2", "published", 20))
            .await
            .unwrap();
        tx.insert_environment(&env).await.unwrap();
        tx.commit().await.unwrap();
        // A failed statement aborts a PostgreSQL transaction, so the duplicate gets its own.
        let mut tx = store.begin().await.unwrap();
        let dup = tx
            .insert_environment(&EnvironmentRow {
                id: "e2".into(),
                ..env.clone()
            })
            .await
            .unwrap_err();
        assert!(matches!(dup, StoreError::Conflict(_)), "names are unique");
        drop(tx);

        let mut tx = store.begin().await.unwrap();
        let mut k1 = tx.signing_keys("ks_1").await.unwrap().pop().unwrap();
        assert_eq!(k1.kid, "k1", "newest first, so k1 is last");
        k1.state = "retiring".into();
        k1.retiring_at = Some(30);
        tx.update_signing_key(&k1).await.unwrap();
        tx.touch_signing_key("k2", 40).await.unwrap();
        tx.update_environment(&EnvironmentRow {
            name: "Production".into(),
            updated_at: 2,
            ..env.clone()
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.read().await.unwrap();
        let keys = tx.signing_keys("ks_1").await.unwrap();
        assert_eq!(
            keys.iter()
                .map(|k| (k.kid.as_str(), k.state.as_str(), k.last_used_at))
                .collect::<Vec<_>>(),
            vec![("k2", "published", Some(40)), ("k1", "retiring", None)]
        );
        assert_eq!(tx.get_key_set("ks_1").await.unwrap(), Some(ks.clone()));
        assert_eq!(tx.due_key_sets(4_999).await.unwrap().len(), 0);
        assert_eq!(tx.due_key_sets(5_000).await.unwrap().len(), 1);
        assert_eq!(
            tx.get_environment("e1").await.unwrap().unwrap().name,
            "Production"
        );
        assert_eq!(tx.list_environments().await.unwrap().len(), 1);
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        assert!(tx.delete_environment("e1").await.unwrap());
        assert!(!tx.delete_environment("e1").await.unwrap());
        tx.commit().await.unwrap();
    }
);

fn conference(id: &str, appt: &str, started_at: i64) -> switchboard_store::ConferenceRow {
    switchboard_store::ConferenceRow {
        id: id.into(),
        profile_id: "p1".into(),
        profile_name: "Healthcare Org".into(),
        environment_id: "e1".into(),
        appointment_id: appt.into(),
        csn: Some("77".into()),
        name: format!("Appointment for Ana Li Healthcare Org:{appt} in Radiology"),
        patient_name: "Ana Li".into(),
        department: Some("Radiology".into()),
        room: format!("room-{id}"),
        state: "active".into(),
        started_at,
        ended_at: None,
        ended_reason: None,
        epic_connected_at: None,
        epic_ended_at: None,
    }
}

store_test!(
    one_active_conference_per_appointment_and_a_new_one_after_it_ended,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        let a = tx
            .insert_or_get_active_conference(&conference("c1", "A1", 10))
            .await
            .unwrap();
        let b = tx
            .insert_or_get_active_conference(&conference("c2", "A1", 11))
            .await
            .unwrap();
        assert_eq!((a.id.as_str(), b.id.as_str()), ("c1", "c1"));
        assert_eq!(tx.count_active_conferences("p1").await.unwrap(), 1);
        assert!(
            tx.end_conference("c1", 20, "last participant left")
                .await
                .unwrap()
        );
        assert!(
            !tx.end_conference("c1", 21, "again").await.unwrap(),
            "ends once"
        );
        let c = tx
            .insert_or_get_active_conference(&conference("c3", "A1", 30))
            .await
            .unwrap();
        assert_eq!(c.id, "c3", "a later visit gets a new conference");
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        let ended = tx.get_conference("c1").await.unwrap().unwrap();
        assert_eq!((ended.state.as_str(), ended.ended_at), ("ended", Some(20)));
    }
);

store_test!(
    racing_launches_of_one_appointment_meet_in_one_conference,
    |store: Arc<dyn Store>| async move {
        let mut handles = Vec::new();
        for i in 0..8 {
            let store = Arc::clone(&store);
            handles.push(tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                let c = tx
                    .insert_or_get_active_conference(&conference(&format!("r{i}"), "RACE", i))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                c.id
            }));
        }
        let mut ids = HashSet::new();
        for h in handles {
            ids.insert(h.await.unwrap());
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
    }
);

store_test!(
    launches_are_single_use_and_states_are_taken_once,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        assert!(tx.use_telehealth_launch("d1", "p1", 1, 100).await.unwrap());
        assert!(!tx.use_telehealth_launch("d1", "p1", 2, 100).await.unwrap());
        tx.insert_telehealth_state(&switchboard_store::TelehealthStateRow {
            digest: "s1".into(),
            profile_id: "p1".into(),
            role: "provider".into(),
            secret_ref: "sec1".into(),
            created_at: 1,
            expires_at: 50,
        })
        .await
        .unwrap();
        tx.insert_telehealth_state(&switchboard_store::TelehealthStateRow {
            digest: "s2".into(),
            profile_id: "p1".into(),
            role: "patient".into(),
            secret_ref: "sec2".into(),
            created_at: 1,
            expires_at: 500,
        })
        .await
        .unwrap();
        assert_eq!(
            tx.take_telehealth_state("s2").await.unwrap().unwrap().role,
            "patient"
        );
        assert!(tx.take_telehealth_state("s2").await.unwrap().is_none());
        assert_eq!(
            tx.purge_telehealth_launches(200).await.unwrap(),
            vec!["sec1".to_owned()]
        );
        assert!(
            tx.use_telehealth_launch("d1", "p1", 201, 300)
                .await
                .unwrap(),
            "purged"
        );
        tx.commit().await.unwrap();
    }
);

store_test!(
    conferences_page_newest_first_search_and_purge,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        for i in 0..25 {
            let mut c = conference(&format!("c{i:02}"), &format!("APPT{i}"), 1000 + i / 2);
            if i % 5 == 0 {
                c.patient_name = "Zed 50%_Off".into();
                c.name = "Appointment for Zed 50%_Off Healthcare Org:x".into();
            }
            tx.insert_or_get_active_conference(&c).await.unwrap();
            if i < 20 {
                tx.end_conference(&c.id, 2000 + i, "done").await.unwrap();
            }
        }
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = tx
                .list_conferences(&switchboard_store::ConferenceFilter {
                    state: Some("ended".into()),
                    before: before.clone(),
                    limit: 7,
                    ..Default::default()
                })
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            let last = page.last().unwrap();
            before = Some((last.started_at, last.id.clone()));
            seen.extend(page.into_iter().map(|c| c.id));
        }
        let mut expected: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
        expected.reverse();
        assert_eq!(seen, expected, "every ended conference once, newest first");
        let find = |search: &str, phi: bool| switchboard_store::ConferenceFilter {
            search: Some(search.into()),
            search_patient_names: phi,
            limit: 100,
            ..Default::default()
        };
        assert_eq!(
            tx.list_conferences(&find("50%_", true))
                .await
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            tx.list_conferences(&find("0%", true)).await.unwrap().len(),
            5,
            "wildcards are literal"
        );
        assert_eq!(
            tx.list_conferences(&find("zed", false))
                .await
                .unwrap()
                .len(),
            0,
            "no name search without PHI access"
        );
        assert_eq!(
            tx.list_conferences(&find("appt1", false))
                .await
                .unwrap()
                .len(),
            11
        );
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        let (n, _) = tx.purge_conferences(2010).await.unwrap();
        assert_eq!(n, 10);
        tx.commit().await.unwrap();
    }
);

fn device(id: &str, serial: &str) -> switchboard_store::DeviceRow {
    switchboard_store::DeviceRow {
        id: id.into(),
        serial: serial.into(),
        uuid: None,
        platform: "ios".into(),
        model: None,
        os_version: None,
        name: serial.into(),
        slot: None,
        group_id: "g1".into(),
        location_id: Some("ward".into()),
        credential_digest: format!("digest-{id}"),
        status: "available".into(),
        holder_id: None,
        checkout_id: None,
        pin_set: false,
        battery: Some(80),
        charging: None,
        docked: Some(true),
        reported_location: None,
        apps: "[]".into(),
        appconfig: "{}".into(),
        readiness: "[]".into(),
        last_heartbeat_at: Some(1),
        enrolled_at: 1,
        revoked_at: None,
        created_at: 1,
        updated_at: 1,
        lost_at: None,
        lost_reason: None,
    }
}

fn checkout(id: &str, device_id: &str, user_id: &str) -> switchboard_store::CheckoutRow {
    switchboard_store::CheckoutRow {
        id: id.into(),
        device_id: device_id.into(),
        user_id: user_id.into(),
        location_id: None,
        source: "operator".into(),
        pin_set: false,
        started_at: 10,
        due_at: 100,
        ended_at: None,
        checkin_id: None,
    }
}

store_test!(
    a_device_has_one_open_check_out_and_is_taken_only_when_available,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        tx.insert_device(&device("d1", "SER1")).await.unwrap();
        assert!(tx.take_device("d1", "u1", "c1", false, 5).await.unwrap());
        assert!(
            !tx.take_device("d1", "u2", "c2", false, 5).await.unwrap(),
            "already taken"
        );
        tx.insert_checkout(&checkout("c1", "d1", "u1"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // A second open check-out of the same device is refused by the database itself.
        let mut tx = store.begin().await.unwrap();
        let err = tx
            .insert_checkout(&checkout("c2", "d1", "u2"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        assert!(tx.end_checkout("c1", 50, "ci1").await.unwrap());
        assert!(
            !tx.end_checkout("c1", 60, "ci2").await.unwrap(),
            "ends once"
        );
        tx.insert_checkout(&checkout("c3", "d1", "u2"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        let open = tx.open_checkouts(Some("u2"), None).await.unwrap();
        assert_eq!(
            open.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["c3"]
        );
        assert_eq!(
            tx.open_checkouts(None, Some(101)).await.unwrap().len(),
            1,
            "due before 101"
        );
        assert!(tx.open_checkouts(None, Some(100)).await.unwrap().is_empty());
        let by_serial = tx.lock_device("SER1").await.unwrap().unwrap();
        assert_eq!(
            (by_serial.status.as_str(), by_serial.holder_id.as_deref()),
            ("checked_out", Some("u1"))
        );
    }
);

store_test!(
    old_device_history_and_idempotency_keys_are_purged,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        tx.insert_device(&device("d1", "SER1")).await.unwrap();
        tx.insert_device_event("d1", 100, "docked", "{}")
            .await
            .unwrap();
        tx.insert_device_event("d1", 900, "undocked", "{}")
            .await
            .unwrap();
        tx.put_idempotency(&switchboard_store::IdempotencyRow {
            scope: "s".into(),
            key: "k".into(),
            request_digest: "d".into(),
            status: 201,
            response: "{}".into(),
            created_at: 100,
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.purge_device_history(500, 500).await.unwrap(), 2);
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        let left = tx.device_events("d1", 10).await.unwrap();
        assert_eq!(
            left.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["undocked"]
        );
        assert!(tx.get_idempotency("s", "k").await.unwrap().is_none());
    }
);

fn credential(user: &str, profile: &str, secret: &str) -> switchboard_store::SsoCredentialRow {
    switchboard_store::SsoCredentialRow {
        user_id: user.into(),
        profile_id: profile.into(),
        username: format!("{user}-login"),
        secret_ref: secret.into(),
        source: "admin".into(),
        updated_at: 1,
    }
}

store_test!(
    sso_credentials_replace_and_delete_hand_back_their_secrets,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        assert_eq!(
            tx.put_sso_credential(&credential("u1", "p1", "s1"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            tx.put_sso_credential(&credential("u1", "p1", "s2"))
                .await
                .unwrap(),
            Some("s1".to_owned()),
            "the replaced secret is handed back"
        );
        tx.put_sso_credential(&credential("u1", "p2", "s3"))
            .await
            .unwrap();
        tx.put_sso_credential(&credential("u2", "p1", "s4"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        assert_eq!(
            tx.delete_sso_credentials("p1", Some("u2")).await.unwrap(),
            ["s4"]
        );
        assert!(
            tx.delete_sso_credentials("p1", Some("u2"))
                .await
                .unwrap()
                .is_empty()
        );
        tx.put_sso_credential(&credential("u2", "p1", "s5"))
            .await
            .unwrap();
        let mut gone = tx.delete_sso_credentials("p1", None).await.unwrap();
        gone.sort();
        assert_eq!(gone, ["s2", "s5"]);
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        let left = tx.sso_credentials_of("u1").await.unwrap();
        assert_eq!(
            left.iter()
                .map(|c| c.secret_ref.as_str())
                .collect::<Vec<_>>(),
            ["s3"]
        );
        assert!(tx.sso_credentials_of("u2").await.unwrap().is_empty());
    }
);

store_test!(
    concurrent_writers_each_see_their_commit_and_a_dropped_one_leaves_nothing,
    |store: Arc<dyn Store>| async move {
        // Forty writers at once (SQLite commits them in groups): every commit that returned is
        // visible to a fresh read at once, and the writers that dropped their transaction
        // (every fifth) left nothing behind, whichever group they fell in.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                tx.insert_user(&user(&format!("u{i}"), &format!("user{i}"), "auditor"))
                    .await
                    .unwrap();
                tx.enqueue_jobs(&[job("a.b", None, i), job("a.b", None, i)])
                    .await
                    .unwrap();
                if i % 5 == 4 {
                    drop(tx);
                    return false;
                }
                tx.commit().await.unwrap();
                let mut r = store.read().await.unwrap();
                assert!(
                    r.get_user(&format!("u{i}")).await.unwrap().is_some(),
                    "commit {i} returned but is not visible"
                );
                true
            }));
        }
        let mut committed = 0;
        for t in tasks {
            committed += usize::from(t.await.unwrap());
        }
        assert_eq!(committed, 32);
        let mut r = store.read().await.unwrap();
        let users = r.list_users().await.unwrap();
        assert_eq!(users.len(), 32);
        assert!(users.iter().all(|u| u.username != "user4"));
        assert_eq!(r.job_counts(1_000).await.unwrap().queued, 64);
        drop(r);
        // A failed statement inside a transaction fails only that transaction.
        let mut tx = store.begin().await.unwrap();
        assert!(matches!(
            tx.insert_user(&user("dup", "user0", "auditor")).await,
            Err(StoreError::Conflict(_))
        ));
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        tx.insert_user(&user("after", "after", "auditor"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut r = store.read().await.unwrap();
        assert_eq!(r.list_users().await.unwrap().len(), 33);
        assert!(r.get_user("dup").await.unwrap().is_none());
    }
);

/// SQLite: a transaction dropped without committing must not leave the writer's physical
/// transaction open when no other writer follows (another process could not write at all).
#[tokio::test]
async fn a_dropped_sqlite_write_frees_the_file_for_other_processes() {
    let db = switchboard_store::testing::sqlite().await;
    let mut tx = db.store.begin().await.unwrap();
    tx.insert_user(&user("u1", "one", "auditor")).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.store.begin().await.unwrap();
    tx.insert_user(&user("u2", "two", "auditor")).await.unwrap();
    drop(tx);
    // Another process's store on the same file, with a short wait for the lock.
    let other = switchboard_store::connect(
        &db.url,
        &switchboard_store::ConnectOptions {
            sqlite_busy_timeout: std::time::Duration::from_secs(2),
            ..switchboard_store::ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    let mut tx = other.begin().await.unwrap();
    tx.insert_user(&user("u3", "three", "auditor"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    other.close().await;
    let mut r = db.store.read().await.unwrap();
    let mut names: Vec<String> = r
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    names.sort();
    assert_eq!(names, ["one", "three"]);
}

fn access(at: i64, app: Option<&str>, gateway: &str) -> switchboard_store::GatewayRequestRow {
    switchboard_store::GatewayRequestRow {
        seq: 0,
        at,
        app_id: app.map(str::to_owned),
        gateway_id: gateway.to_owned(),
        kind: "fhir".to_owned(),
        interaction: Some("read".to_owned()),
        resource_type: Some("Patient".to_owned()),
        resource_id: Some(format!("p{at}")),
        status: 200,
        latency_us: 900 + at,
        request_id: Some(format!("req\t{at}")),
    }
}

store_test!(
    access_records_are_stored_in_batches_and_listed_newest_first,
    |store: Arc<dyn Store>| async move {
        use switchboard_store::access_log::{AccessBatch, SEQ_PER_BATCH};
        // Three batches: gateway g1 in the first and last, app a2 only in the second.
        let batches = [
            vec![access(1, Some("a1"), "g1"), access(2, None, "g1")],
            vec![access(3, Some("a2"), "g2")],
            vec![access(4, Some("a1"), "g1"), access(5, Some("a1"), "g2")],
        ];
        let mut ids = Vec::new();
        for b in &batches {
            let mut tx = store.begin().await.unwrap();
            ids.push(
                tx.insert_gateway_request_batch(&AccessBatch::new(b))
                    .await
                    .unwrap(),
            );
            tx.commit().await.unwrap();
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let mut r = store.read().await.unwrap();
        let ats =
            |v: &[switchboard_store::GatewayRequestRow]| v.iter().map(|r| r.at).collect::<Vec<_>>();
        let all = r
            .list_gateway_requests(None, None, None, 100)
            .await
            .unwrap();
        assert_eq!(ats(&all), [5, 4, 3, 2, 1]);
        assert_eq!(all[0].seq, ids[2] * SEQ_PER_BATCH + 1);
        assert_eq!(
            all[0].request_id.as_deref(),
            Some("req\t5"),
            "a tab survives"
        );
        assert_eq!(all[3].app_id, None);
        assert_eq!(all[0], {
            let mut w = access(5, Some("a1"), "g2");
            w.seq = all[0].seq;
            w
        });
        // Filters, the cursor and the limit.
        assert_eq!(
            ats(&r
                .list_gateway_requests(Some("g1"), None, None, 100)
                .await
                .unwrap()),
            [4, 2, 1]
        );
        assert_eq!(
            ats(&r
                .list_gateway_requests(None, Some("a2"), None, 100)
                .await
                .unwrap()),
            [3]
        );
        assert_eq!(
            ats(&r
                .list_gateway_requests(Some("g1"), Some("a1"), None, 100)
                .await
                .unwrap()),
            [4, 1]
        );
        let page = r.list_gateway_requests(None, None, None, 2).await.unwrap();
        assert_eq!(ats(&page), [5, 4]);
        let next = r
            .list_gateway_requests(None, None, Some(page[1].seq), 2)
            .await
            .unwrap();
        assert_eq!(ats(&next), [3, 2]);
        let last = r
            .list_gateway_requests(None, None, Some(next[1].seq), 2)
            .await
            .unwrap();
        assert_eq!(ats(&last), [1]);
        assert!(
            r.list_gateway_requests(Some("g9"), None, None, 100)
                .await
                .unwrap()
                .is_empty()
        );
        // A batch reads back byte for byte.
        assert_eq!(
            r.gateway_request_batch_lines(ids[1]).await.unwrap(),
            Some(AccessBatch::new(&batches[1]).lines)
        );
        assert_eq!(
            r.gateway_request_batch_lines(ids[2] + 1).await.unwrap(),
            None
        );
    }
);

store_test!(
    a_long_access_history_pages_across_many_batches,
    |store: Arc<dyn Store>| async move {
        use switchboard_store::access_log::AccessBatch;
        // Twenty batches of three; the app of interest only in every fifth batch.
        for b in 0..20 {
            let rows: Vec<_> = (0..3)
                .map(|i| {
                    access(
                        b * 3 + i,
                        Some(if b % 5 == 0 { "rare" } else { "busy" }),
                        "g",
                    )
                })
                .collect();
            let mut tx = store.begin().await.unwrap();
            tx.insert_gateway_request_batch(&AccessBatch::new(&rows))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let mut r = store.read().await.unwrap();
        let rare = r
            .list_gateway_requests(None, Some("rare"), None, 100)
            .await
            .unwrap();
        assert_eq!(
            rare.iter().map(|r| r.at).collect::<Vec<_>>(),
            [47, 46, 45, 32, 31, 30, 17, 16, 15, 2, 1, 0]
        );
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = r
                .list_gateway_requests(Some("g"), None, before, 7)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            before = page.last().map(|p| p.seq);
            seen.extend(page.into_iter().map(|p| p.at));
        }
        assert_eq!(seen, (0..60).rev().collect::<Vec<_>>());
    }
);

store_test!(
    the_sqlite_writer_counts_its_transactions_and_commits,
    |store: Arc<dyn Store>| async move {
        let before = store.pool_stats().writer;
        let mut tx = store.begin().await.unwrap();
        tx.insert_user(&user("u1", "alice", "admin")).await.unwrap();
        tx.commit().await.unwrap();
        // Dropped without committing: it held the writer all the same.
        let mut tx = store.begin().await.unwrap();
        tx.insert_user(&user("u2", "bob", "admin")).await.unwrap();
        drop(tx);
        let after = store.pool_stats().writer;
        match store.backend() {
            switchboard_store::Backend::Postgres => {
                assert_eq!(after, None, "PostgreSQL has no single writer");
            }
            switchboard_store::Backend::Sqlite => {
                let (b, a) = (before.unwrap(), after.unwrap());
                assert_eq!(a.transactions - b.transactions, 2);
                assert!(a.group_commits > b.group_commits, "{b:?} -> {a:?}");
                assert!(a.held_us >= b.held_us && a.commit_us >= b.commit_us);
            }
        }
    }
);

fn command(
    id: &str,
    created_at: i64,
    state: &str,
    delivered_at: Option<i64>,
) -> switchboard_store::CommandRow {
    switchboard_store::CommandRow {
        id: id.into(),
        device_id: "d1".into(),
        kind: "force_quit".into(),
        params: "{}".into(),
        secret_ref: None,
        state: state.into(),
        checkin_id: None,
        position: None,
        created_at,
        expires_at: if id == "expired" { 50 } else { 10_000 },
        delivered_at,
        finished_at: None,
        result: None,
    }
}

store_test!(
    a_device_is_handed_its_commands_once_oldest_first,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        tx.insert_device(&device("d1", "SER1")).await.unwrap();
        tx.insert_commands(&[
            command("second", 20, "queued", None),
            command("first", 10, "queued", None),
            command("expired", 5, "queued", None),
            command("lost-answer", 30, "delivered", Some(40)),
            command("just-sent", 31, "delivered", Some(90)),
            command("done", 1, "succeeded", Some(2)),
        ])
        .await
        .unwrap();
        tx.commit().await.unwrap();
        // At 100, deliveries before 60 with no answer are handed out again.
        let mut tx = store.begin().await.unwrap();
        let got = tx.deliver_commands("d1", 100, 60).await.unwrap();
        tx.commit().await.unwrap();
        let ids: Vec<&str> = got.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["first", "second", "lost-answer"]);
        assert!(
            got.iter()
                .all(|c| c.state == "delivered" && c.delivered_at == Some(100))
        );
        let mut tx = store.begin().await.unwrap();
        assert!(
            tx.deliver_commands("d1", 101, 60).await.unwrap().is_empty(),
            "each command once"
        );
        assert_eq!(
            tx.get_command("first").await.unwrap().unwrap().delivered_at,
            Some(100)
        );
        assert_eq!(
            tx.get_command("expired").await.unwrap().unwrap().state,
            "queued",
            "an expired command is not handed out"
        );
    }
);

store_test!(
    background_writes_let_waiting_foreground_ones_go_first,
    |store: Arc<dyn Store>| async move {
        if store.backend() != switchboard_store::Backend::Sqlite {
            return; // PostgreSQL has no single writer to queue for
        }
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let write = |name: &'static str, background: bool| {
            let store = Arc::clone(&store);
            let order = Arc::clone(&order);
            tokio::spawn(async move {
                let begin = store.begin();
                let mut tx = if background {
                    switchboard_store::background(begin).await.unwrap()
                } else {
                    begin.await.unwrap()
                };
                order.lock().unwrap().push(name);
                tx.insert_user(&user(name, name, "auditor")).await.unwrap();
                tx.commit().await.unwrap();
            })
        };
        // Long enough for a spawned task to queue; the whole sequence stays well inside the
        // background transaction's BACKGROUND_YIELD.
        let settle = || tokio::time::sleep(switchboard_store::BACKGROUND_YIELD / 8);
        let holder = store.begin().await.unwrap();
        let first = write("first", false);
        settle().await;
        let job = write("job", true);
        settle().await;
        let second = write("second", false);
        settle().await;
        drop(holder);
        for t in [first, job, second] {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["first", "second", "job"]);
    }
);

store_test!(
    a_write_transaction_is_one_whatever_runs_its_statements,
    |store: Arc<dyn Store>| async move {
        // On SQLite some statements run directly on the writer connection and the rest through
        // sqlx on the same connection (`direct.rs`): they must see each other's changes within
        // the transaction and commit or roll back together, also when they alternate.
        let mut tx = store.begin().await.unwrap();
        tx.insert_device(&device("d1", "SER1")).await.unwrap(); // sqlx
        let mut d = tx.lock_device("SER1").await.unwrap().unwrap(); // direct
        d.status = "attention".into();
        tx.update_device(&d).await.unwrap(); // direct
        let all = switchboard_store::DeviceFilter {
            limit: 10,
            ..Default::default()
        };
        let listed = tx.list_devices(&all).await.unwrap(); // sqlx
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, "attention", "sqlx sees the direct update");
        tx.insert_checkout(&checkout("c1", "d1", "u1"))
            .await
            .unwrap(); // direct
        assert_eq!(
            tx.device_checkouts("d1", 5).await.unwrap().len(), // sqlx
            1
        );
        drop(tx);
        let mut tx = store.read().await.unwrap();
        assert!(
            tx.get_device("d1").await.unwrap().is_none(),
            "all rolled back"
        );
        assert!(tx.get_checkout("c1").await.unwrap().is_none());
        drop(tx);
        // Committed, they are there together. (A failed direct statement, a unique violation,
        // is covered by `a_device_has_one_open_check_out_and_is_taken_only_when_available`.)
        let mut tx = store.begin().await.unwrap();
        tx.insert_device(&device("d1", "SER1")).await.unwrap();
        tx.update_device(&d).await.unwrap();
        tx.insert_checkout(&checkout("c1", "d1", "u1"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        assert_eq!(
            tx.get_device("SER1").await.unwrap().unwrap().status,
            "attention"
        );
        assert!(tx.get_checkout("c1").await.unwrap().is_some());
    }
);

fn step(checkin_id: &str, position: i64) -> switchboard_store::CheckinStepRow {
    switchboard_store::CheckinStepRow {
        checkin_id: checkin_id.into(),
        position,
        action: "force_quit".into(),
        spec: "{}".into(),
        on_device: true,
        mandatory: true,
        status: "pending".into(),
        detail: "sent".into(),
        install_id: None,
        attempts: 0,
        outcome_unknown: false,
        repeats: 0,
        command_id: None,
        updated_at: 10,
    }
}

fn checkin_row(id: &str) -> switchboard_store::CheckinRow {
    switchboard_store::CheckinRow {
        id: id.into(),
        device_id: "d1".into(),
        checkout_id: "co1".into(),
        user_id: "u1".into(),
        requested_by: "operator".into(),
        status: "in_progress".into(),
        warnings: "[]".into(),
        started_at: 20,
        completed_at: None,
    }
}

store_test!(
    a_batch_of_writes_lands_as_written_one_by_one,
    |store: Arc<dyn Store>| async move {
        use switchboard_store::Write;
        let mut tx = store.begin().await.unwrap();
        tx.insert_device(&device("d1", "SER1")).await.unwrap();
        tx.insert_checkout(&checkout("co1", "d1", "u1"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // A check-in's writes, the rows referring to each other, in one batch.
        let checkin = checkin_row("ci1");
        let mut cmd = command("q1", 20, "queued", None);
        cmd.checkin_id = Some("ci1".into());
        cmd.position = Some(0);
        let mut d = device("d1", "SER1");
        d.status = "returning".into();
        let mut tx = store.begin().await.unwrap();
        tx.write_all(&[
            Write::InsertCheckin(checkin.clone()),
            Write::InsertCommands(vec![cmd.clone()]),
            Write::InsertCheckinSteps(vec![step("ci1", 0), step("ci1", 1)]),
            Write::EnqueueJobs(vec![job("t.logout", Some("logout-ci1"), 20)]),
            Write::EndCheckout {
                id: "co1".into(),
                at: 20,
                checkin_id: "ci1".into(),
            },
            Write::UpdateDevice(Box::new(d.clone())),
            Write::DeviceEvent {
                device_id: "d1".into(),
                at: 20,
                kind: "checked_in".into(),
                detail: r#"{"note": "it's $1"}"#.into(),
            },
        ])
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        assert_eq!(tx.get_checkin("ci1").await.unwrap(), Some(checkin.clone()));
        assert_eq!(tx.checkin_steps("ci1").await.unwrap().len(), 2);
        assert_eq!(tx.get_command("q1").await.unwrap(), Some(cmd.clone()));
        assert_eq!(
            tx.get_checkout("co1")
                .await
                .unwrap()
                .unwrap()
                .checkin_id
                .as_deref(),
            Some("ci1")
        );
        assert_eq!(
            tx.get_device("d1").await.unwrap().unwrap().status,
            "returning"
        );
        let events = tx.device_events("d1", 5).await.unwrap();
        assert_eq!(
            events[0].detail, r#"{"note": "it's $1"}"#,
            "a quoted $1 is data"
        );
        let jobs = tx
            .list_jobs(&JobFilter {
                state: None,
                kind: Some("t.logout".into()),
                limit: 5,
            })
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].payload, serde_json::json!({"n": 20}));
        drop(tx);
        // Two changes to one row in a batch both apply, in order; changes to others too.
        let mut first = step("ci1", 0);
        first.status = "done".into();
        first.attempts = 1;
        let mut second = first.clone();
        second.detail = "done on the device".into();
        second.attempts = 2;
        let mut other = step("ci1", 1);
        other.status = "failed".into();
        let mut done = cmd.clone();
        done.state = "succeeded".into();
        done.finished_at = Some(30);
        let mut finished = checkin.clone();
        finished.status = "complete".into();
        finished.completed_at = Some(30);
        d.status = "available".into();
        let mut tx = store.begin().await.unwrap();
        tx.write_all(&[
            Write::UpdateCheckinStep(first),
            Write::UpdateCommand(done.clone()),
            Write::UpdateCheckinStep(second.clone()),
            Write::UpdateCheckinStep(other.clone()),
            Write::UpdateCheckin(finished.clone()),
            Write::UpdateDevice(Box::new(d)),
        ])
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        let steps = vec![second, other];
        assert_eq!(tx.checkin_steps("ci1").await.unwrap(), steps);
        assert_eq!(tx.get_command("q1").await.unwrap(), Some(done));
        assert_eq!(tx.get_checkin("ci1").await.unwrap(), Some(finished.clone()));
        assert_eq!(
            tx.get_device("d1").await.unwrap().unwrap().status,
            "available"
        );
        drop(tx);
        // A check-in and its steps, by position, in one locking read.
        let mut tx = store.begin().await.unwrap();
        assert_eq!(
            tx.lock_checkin("ci1").await.unwrap(),
            Some((finished, steps))
        );
        drop(tx);
        // Nothing to write (inserts of no rows) is no statement at all.
        let mut tx = store.begin().await.unwrap();
        tx.write_all(&[Write::EnqueueJobs(vec![]), Write::InsertCommands(vec![])])
            .await
            .unwrap();
        tx.write_all(&[]).await.unwrap();
        drop(tx);
        // A failing part fails the batch, and the transaction with it.
        let mut tx = store.begin().await.unwrap();
        let err = tx
            .write_all(&[
                Write::DeviceEvent {
                    device_id: "d1".into(),
                    at: 40,
                    kind: "lost".into(),
                    detail: "{}".into(),
                },
                Write::InsertCheckin(checkin),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        drop(tx);
        let mut tx = store.read().await.unwrap();
        assert_eq!(tx.device_events("d1", 5).await.unwrap().len(), 1);
    }
);

store_test!(
    a_check_in_skips_its_lendings_open_commands_and_deletes_their_pin,
    |store: Arc<dyn Store>| async move {
        use switchboard_store::Write;
        let pin = SecretRow {
            id: "pin1".into(),
            owner: "command:set-pin".into(),
            purpose: "pin".into(),
            key_id: "mk1".into(),
            nonce: vec![1; 12],
            ciphertext: vec![2; 40],
            created_at: 1,
            updated_at: 1,
        };
        let kept = SecretRow {
            id: "pin2".into(),
            ..pin.clone()
        };
        let lending = |id: &str, kind: &str, state: &str, delivered: Option<i64>| {
            let mut c = command(id, 10, state, delivered);
            c.kind = kind.into();
            c
        };
        let mut set_pin = lending("set-pin", "set_pin", "delivered", Some(12));
        set_pin.secret_ref = Some("pin1".into());
        let mut of_checkin = lending("force-quit", "force_quit", "queued", None);
        of_checkin.checkin_id = Some("ci0".into());
        let mut other_device = lending("elsewhere", "show_ready", "queued", None);
        other_device.device_id = "d2".into();
        let mut expired = lending("expired", "show_ready", "queued", None);
        expired.secret_ref = Some("pin2".into());
        let mut tx = store.begin().await.unwrap();
        tx.insert_device(&device("d1", "SER1")).await.unwrap();
        tx.insert_device(&device("d2", "SER2")).await.unwrap();
        tx.put_secret(&pin).await.unwrap();
        tx.put_secret(&kept).await.unwrap();
        tx.insert_commands(&[
            lending("ready", "show_ready", "queued", None),
            set_pin,
            lending("confirmed", "show_ready", "succeeded", Some(11)),
            lending("message", "show_message", "queued", None),
            of_checkin,
            other_device,
            expired,
        ])
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.write_all(&[Write::CancelLendingCommands {
            device_id: "d1".into(),
            at: 100,
            reason: "cancelled by check-in".into(),
        }])
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.read().await.unwrap();
        for (id, state) in [
            ("ready", "skipped"),
            ("set-pin", "skipped"),
            ("confirmed", "succeeded"),
            ("message", "queued"),
            ("force-quit", "queued"),
            ("elsewhere", "queued"),
            ("expired", "queued"),
        ] {
            let c = tx.get_command(id).await.unwrap().unwrap();
            assert_eq!(c.state, state, "{id}");
            if state == "skipped" {
                assert_eq!(c.finished_at, Some(100));
                assert_eq!(c.result.as_deref(), Some("cancelled by check-in"));
                assert_eq!(c.secret_ref, None);
            }
        }
        assert!(
            tx.get_secret("pin1").await.unwrap().is_none(),
            "the PIN is gone"
        );
        assert!(
            tx.get_secret("pin2").await.unwrap().is_some(),
            "an expired command's secret is not this check-in's"
        );
    }
);

store_test!(
    a_check_in_locked_after_a_wait_reads_the_steps_its_holder_wrote,
    |store: Arc<dyn Store>| async move {
        use switchboard_store::Write;
        let checkin = checkin_row("ci1");
        let mut tx = store.begin().await.unwrap();
        tx.write_all(&[
            Write::InsertCheckin(checkin),
            Write::InsertCheckinSteps(vec![step("ci1", 0), step("ci1", 1)]),
        ])
        .await
        .unwrap();
        tx.commit().await.unwrap();
        // The first writer holds the check-in; the second waits for it (PostgreSQL: the row
        // locks; SQLite: the one writer) and must then see the first one's step, not the one
        // from before its wait.
        let mut first = store.begin().await.unwrap();
        let (_, steps) = first.lock_checkin("ci1").await.unwrap().unwrap();
        let second = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                let (_, steps) = tx.lock_checkin("ci1").await.unwrap().unwrap();
                steps
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the second writer waits");
        let mut done = steps[1].clone();
        done.status = "done".into();
        done.attempts = 1;
        first
            .write_all(&[Write::UpdateCheckinStep(done.clone())])
            .await
            .unwrap();
        first.commit().await.unwrap();
        let seen = second.await.unwrap();
        assert_eq!(seen, vec![steps[0].clone(), done]);
    }
);

store_test!(
    a_check_in_reads_its_device_group_and_holder_at_once,
    |store: Arc<dyn Store>| async move {
        let mut tx = store.begin().await.unwrap();
        let group = switchboard_store::DeviceGroupRow {
            id: "g1".into(),
            name: "ICU phones".into(),
            lending_minutes: 720,
            workflows: "{}".into(),
            required_apps: "[]".into(),
            checkin_on_dock: true,
            created_at: 1,
            updated_at: 2,
        };
        tx.put_device_group(&group).await.unwrap();
        let nurse = switchboard_store::DeviceUserRow {
            id: "u1".into(),
            username: "rn1".into(),
            display_name: "Nurse One".into(),
            badge_digest: None,
            password_hash: None,
            device_limit: Some(2),
            source: "local".into(),
            disabled: false,
            created_at: 3,
            updated_at: 4,
        };
        tx.put_device_user(&nurse).await.unwrap();
        let mut held = device("d1", "SER1");
        held.status = "checked_out".into();
        held.holder_id = Some("u1".into());
        tx.insert_device(&held).await.unwrap();
        let mut orphan = device("d2", "SER2");
        orphan.group_id = "gone".into();
        tx.insert_device(&orphan).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        assert_eq!(
            tx.lock_device_with_group_and_holder("SER1").await.unwrap(),
            Some((held.clone(), Some(group), Some(nurse)))
        );
        assert_eq!(
            tx.lock_device_with_group_and_holder("d2").await.unwrap(),
            Some((orphan, None, None))
        );
        assert_eq!(
            tx.lock_device_with_group_and_holder("nope").await.unwrap(),
            None
        );
        assert_eq!(
            tx.lock_checkin("nope").await.unwrap(),
            None,
            "no such check-in"
        );
        // Several at once (a batch of check-ins): by id or serial, in id order, the unknown left
        // out, a key with a quote in it just a key.
        let many = tx
            .lock_devices_with_group_and_holder(&["d2", "nope", "SER1", "x' OR '1'='1", "d1"])
            .await
            .unwrap();
        let ids: Vec<&str> = many.iter().map(|(d, ..)| d.id.as_str()).collect();
        assert_eq!(ids, ["d1", "d2"]);
        assert_eq!(
            many[0].1.as_ref().map(|g| g.name.as_str()),
            Some("ICU phones")
        );
        assert_eq!(many[0].2.as_ref().map(|u| u.username.as_str()), Some("rn1"));
        assert!(many[1].1.is_none() && many[1].2.is_none());
        assert!(
            tx.lock_devices_with_group_and_holder(&[])
                .await
                .unwrap()
                .is_empty()
        );
    }
);

// PostgreSQL: a device locked by a batch of check-ins keeps every other transaction that locks
// it waiting until the batch ends.
store_test!(
    a_batch_of_check_ins_holds_its_devices_until_it_ends,
    |store: Arc<dyn Store>| async move {
        if !store.begin().await.unwrap().row_locks() {
            return; // SQLite: one writer at a time anyway.
        }
        let mut tx = store.begin().await.unwrap();
        tx.insert_device(&device("d1", "SER1")).await.unwrap();
        tx.insert_device(&device("d2", "SER2")).await.unwrap();
        tx.commit().await.unwrap();
        let mut batch = store.begin().await.unwrap();
        assert_eq!(
            batch
                .lock_devices_with_group_and_holder(&["SER2", "d1"])
                .await
                .unwrap()
                .len(),
            2
        );
        let other = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                let d = tx.lock_device("d2").await.unwrap().unwrap();
                tx.commit().await.unwrap();
                d.name
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!other.is_finished(), "d2 is the batch's until it commits");
        let mut d2 = batch.lock_device("d2").await.unwrap().unwrap();
        d2.name = "renamed by the batch".into();
        batch.update_device(&d2).await.unwrap();
        batch.commit().await.unwrap();
        assert_eq!(other.await.unwrap(), "renamed by the batch");
    }
);

/// PostgreSQL: jobs enqueued by one replica wake the workers of another once the transaction has
/// committed (the notification is sent after the commit, not from inside it), and never for a
/// transaction that rolled back.
#[tokio::test]
async fn a_commit_that_enqueues_jobs_wakes_the_other_replicas() {
    let Some(db) = switchboard_store::testing::postgres(
        "a_commit_that_enqueues_jobs_wakes_the_other_replicas",
    )
    .await
    else {
        return;
    };
    let other = switchboard_store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let woken = other.job_signal();
    let wait = |secs| tokio::time::timeout(std::time::Duration::from_secs(secs), woken.notified());
    // The listener of the other replica needs a moment to subscribe.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let rolled_back = wait(2);
    let mut tx = db.store.begin().await.unwrap();
    tx.enqueue_job(&job("mail", None, 0)).await.unwrap();
    drop(tx);
    assert!(
        rolled_back.await.is_err(),
        "a rolled-back enqueue wakes nobody"
    );

    let committed = wait(10);
    let mut tx = db.store.begin().await.unwrap();
    tx.enqueue_job(&job("mail", None, 0)).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        committed.await.is_ok(),
        "the other replica's workers are woken"
    );
    other.close().await;
}

/// PostgreSQL: background transactions hold at most a quarter of the pool (here 2 of 8), so work
/// queued behind a burst of requests never takes the connections the requests need.
#[tokio::test]
async fn background_transactions_leave_connections_for_requests() {
    let Some(db) = switchboard_store::testing::postgres(
        "background_transactions_leave_connections_for_requests",
    )
    .await
    else {
        return;
    };
    let store = switchboard_store::connect(
        &db.url,
        &switchboard_store::ConnectOptions {
            max_connections: 8,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let first = switchboard_store::background(store.begin()).await.unwrap();
    let second = switchboard_store::background(store.begin()).await.unwrap();
    let third = tokio::spawn({
        let store = Arc::clone(&store);
        async move { switchboard_store::background(store.begin()).await.map(drop) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third background transaction waits");
    // Requests still get connections and commit.
    let mut tx = store.begin().await.unwrap();
    tx.enqueue_job(&job("mail", None, 0)).await.unwrap();
    tx.commit().await.unwrap();
    drop(first);
    tokio::time::timeout(std::time::Duration::from_secs(5), third)
        .await
        .expect("the third goes once a slot is free")
        .unwrap()
        .unwrap();
    drop(second);
    store.close().await;
}
