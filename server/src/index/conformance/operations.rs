//! The operation log and run leases: unique per request id, listed newest
//! first, fenced and taken over, offered for joining, superseded once.

use super::*;

/// Runs every check of the operation log against `log`, which must start
/// empty.
pub async fn run_operation_log<I: OperationLog>(log: &I) {
    runs_are_leased_fenced_and_taken_over(log).await;
    operations_are_unique_per_request_id(log).await;
    operations_list_newest_first_resume_and_purge(log).await;
    a_finished_operation_can_be_superseded_once(log).await;
    offers_name_their_attempt_and_stay_withdrawn(log).await;
    a_burst_of_creations_lands_each_once(log).await;
    // After the burst: moto copies every table for each transaction, so
    // the burst's transactions slow down with every operation created
    // before them.
    offered_operations_are_listed_oldest_first_while_their_offer_stands(log).await;
}

/// A job array's creations, all at once (a backend may send them
/// together): each lands once, as written; of those under one request id
/// one creates it and the rest are answered with it; one under a request
/// id held before is answered with the holder, and its refusal costs no
/// other creation anything.
pub(super) async fn a_burst_of_creations_lands_each_once<I: OperationLog>(log: &I) {
    let record = |id: &str, rid: Option<&str>| OperationRecord {
        id: id.into(),
        request_id: rid.map(str::to_owned),
        request: warm_spec(rid),
        owner: None,
        state: phase_state(id, false),
        created_at: 7,
        resumptions: 0,
        run: Some(run_lease("a", 1_000)),
    };
    let held = record("burst-held", Some("burst-held"));
    assert_eq!(
        log.create_operation(&held).await.unwrap(),
        CreateOutcome::Created
    );
    let mut burst: Vec<OperationRecord> = (0..30)
        .map(|i| record(&format!("burst-{i}"), Some(&format!("burst-rid-{i}"))))
        .collect();
    burst.extend((0..10).map(|i| record(&format!("burst-shared-{i}"), Some("burst-shared"))));
    burst.extend((0..5).map(|i| record(&format!("burst-plain-{i}"), None)));
    burst.push(record("burst-late", Some("burst-held")));
    let outcomes =
        futures::future::join_all(burst.iter().map(|op| log.create_operation(op))).await;
    let mut shared_winner = None;
    let mut shared_losers = Vec::new();
    for (op, outcome) in burst.iter().zip(outcomes) {
        let outcome = outcome.unwrap();
        match op.request_id.as_deref() {
            Some("burst-held") => assert_eq!(
                outcome,
                CreateOutcome::Exists(Box::new(held.clone())),
                "a request id held before answers with its holder"
            ),
            Some("burst-shared") => match outcome {
                CreateOutcome::Created => {
                    assert!(shared_winner.is_none(), "two created burst-shared");
                    shared_winner = Some(op.id.clone());
                }
                CreateOutcome::Exists(holder) => shared_losers.push(holder.id),
            },
            _ => assert_eq!(outcome, CreateOutcome::Created, "{} created", op.id),
        }
    }
    let winner = shared_winner.expect("one of the burst created burst-shared");
    assert_eq!(shared_losers.len(), 9);
    assert!(
        shared_losers.iter().all(|id| *id == winner),
        "the others are answered with the winner {winner}: {shared_losers:?}"
    );
    for op in &burst {
        let stored = log.get_operation(&op.id).await.unwrap();
        match op.request_id.as_deref() {
            Some("burst-held") => assert_eq!(stored, None, "{} was not created", op.id),
            Some("burst-shared") if op.id != winner => {
                assert_eq!(stored, None, "{} lost its request id", op.id);
            }
            _ => assert_eq!(stored.as_ref(), Some(op), "{} stored as written", op.id),
        }
    }
    // The shared request id names the winner for any later creation.
    assert_eq!(
        log.create_operation(&record("burst-after", Some("burst-shared")))
            .await
            .unwrap(),
        CreateOutcome::Exists(Box::new(
            burst.iter().find(|o| o.id == winner).unwrap().clone()
        ))
    );
}

pub(super) async fn offers_name_their_attempt_and_stay_withdrawn<I: OperationLog>(log: &I) {
    let rec = OperationRecord {
        id: "offer1".into(),
        request_id: None,
        request: warm_spec(None),
        owner: None,
        state: phase_state("offer1", false),
        created_at: 1,
        resumptions: 0,
        run: Some(run_lease("a", 1_000)),
    };
    log.create_operation(&rec).await.unwrap();
    let joinable = || async {
        log.get_operation("offer1")
            .await
            .unwrap()
            .unwrap()
            .run
            .is_some_and(|r| r.joinable)
    };
    assert!(!joinable().await, "not joinable until offered");
    assert!(
        !log.offer_join("offer1", &ticket("z", 1)).await.unwrap(),
        "only the run's holder offers"
    );
    assert!(log.offer_join("offer1", &ticket("a", 1)).await.unwrap());
    assert!(joinable().await, "offered");
    assert!(log.withdraw_join("offer1", &ticket("a", 1)).await.unwrap());
    assert!(!joinable().await, "withdrawn");
    assert!(
        !log.offer_join("offer1", &ticket("a", 1)).await.unwrap(),
        "an offer landing after its withdrawal is refused"
    );
    assert!(!joinable().await);
    // Offered again by a new attempt, then taken over: the new attempt is
    // not joinable by the old one's offer.
    let b = log
        .take_over(
            "offer1",
            &RunTerms {
                replica: "b",
                deadline: 5_000,
                now: 1_000,
            },
        )
        .await
        .unwrap()
        .expect("a lapsed run is taken over");
    assert!(log.offer_join("offer1", &b.ticket).await.unwrap());
    assert!(joinable().await, "the new attempt offered");
    let c = log
        .take_over(
            "offer1",
            &RunTerms {
                replica: "c",
                deadline: 9_000,
                now: 5_000,
            },
        )
        .await
        .unwrap()
        .expect("taken over again");
    assert!(
        !joinable().await,
        "a takeover is not joinable by the previous attempt's offer"
    );
    assert!(
        !log.offer_join("offer1", &b.ticket).await.unwrap(),
        "nor can the previous attempt offer it"
    );
    assert!(
        !log.withdraw_join("offer1", &b.ticket).await.unwrap(),
        "a superseded attempt's withdrawal says its run is lost"
    );
    assert!(log
        .update_operation("offer1", &c.ticket, &phase_state("offer1", true))
        .await
        .unwrap());
}

/// What another replica's warm may join is listed however many other
/// operations run, oldest first, and only while the attempt that offered
/// it holds the run and has not withdrawn (nor finished).
pub(super) async fn offered_operations_are_listed_oldest_first_while_their_offer_stands<
    I: OperationLog,
>(
    log: &I,
) {
    let record = |id: &str, created_at: i64| OperationRecord {
        id: id.into(),
        request_id: None,
        request: warm_spec(None),
        owner: None,
        state: phase_state(id, false),
        created_at,
        resumptions: 0,
        run: Some(run_lease("a", 1_000)),
    };
    // A limit below the crowd: a listing of the newest running operations
    // would return only the crowd.
    let listed = || async {
        log.offered_operations(3)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .filter(|id| id.starts_with("board-"))
            .collect::<Vec<_>>()
    };
    // Created youngest first; a crowd of running operations that offer
    // nothing does not hide the offered ones.
    for (id, at) in [("board-young", 300), ("board-old", 100), ("board-mid", 200)] {
        log.create_operation(&record(id, at)).await.unwrap();
    }
    for i in 0..8 {
        log.create_operation(&record(&format!("board-crowd-{i}"), 400 + i))
            .await
            .unwrap();
    }
    assert!(listed().await.is_empty(), "nothing offered yet");
    for id in ["board-young", "board-old", "board-mid"] {
        assert!(log.offer_join(id, &ticket("a", 1)).await.unwrap());
    }
    assert_eq!(listed().await, ["board-old", "board-mid", "board-young"]);
    let first = log.offered_operations(1).await.unwrap();
    assert!(
        first.iter().all(|r| r.run.as_ref().is_some_and(|r| r.joinable)),
        "listed with its offer: {first:?}"
    );
    assert!(log.withdraw_join("board-mid", &ticket("a", 1)).await.unwrap());
    assert_eq!(listed().await, ["board-old", "board-young"], "withdrawn");
    assert!(log
        .update_operation("board-young", &ticket("a", 1), &phase_state("board-young", true))
        .await
        .unwrap());
    assert_eq!(listed().await, ["board-old"], "finished");
    let taken = log
        .take_over(
            "board-old",
            &RunTerms {
                replica: "b",
                deadline: 5_000,
                now: 1_000,
            },
        )
        .await
        .unwrap()
        .expect("a lapsed run is taken over");
    assert!(listed().await.is_empty(), "a takeover offers nothing yet");
    assert!(log.offer_join("board-old", &taken.ticket).await.unwrap());
    assert_eq!(listed().await, ["board-old"], "offered by the new attempt");
    assert!(log.withdraw_join("board-old", &taken.ticket).await.unwrap());
    assert!(listed().await.is_empty());
}

pub(super) async fn runs_are_leased_fenced_and_taken_over<I: OperationLog>(log: &I) {
    let rec = OperationRecord {
        id: "run1".into(),
        request_id: None,
        request: warm_spec(None),
        owner: Some("CN=launcher,O=genomics".into()),
        state: phase_state("run1", false),
        created_at: 1,
        resumptions: 0,
        run: Some(run_lease("a", 1_000)),
    };
    log.create_operation(&rec).await.unwrap();
    let got = log.get_operation("run1").await.unwrap().unwrap();
    assert_eq!(got.run, rec.run, "the run lease round-trips");
    assert_eq!(got.owner, rec.owner, "the owner round-trips");
    let terms = |replica, now| RunTerms {
        replica,
        deadline: now + 1_000,
        now,
    };
    assert_eq!(
        log.take_over("run1", &terms("b", 999)).await.unwrap(),
        None,
        "a live run is not taken over"
    );
    assert_eq!(
        log.renew_run("run1", &ticket("a", 1), 1_500).await.unwrap(),
        Renewal::Held {
            cancel_requested: false
        }
    );
    assert_eq!(
        log.take_over("run1", &terms("b", 1_200)).await.unwrap(),
        None,
        "renewed: live until 1500"
    );
    let b = log
        .take_over("run1", &terms("b", 1_500))
        .await
        .unwrap()
        .expect("a lapsed run is taken over");
    assert_eq!(b.ticket, ticket("b", 2), "as the next attempt");
    assert_eq!(b.crashes, 1, "a run that lapsed counts as a crash");
    let mut state = phase_state("run1", false);
    state.counters.objects_copied = 9;
    assert!(
        !log.update_operation("run1", &ticket("a", 1), &state)
            .await
            .unwrap(),
        "the superseded runner cannot write (fencing)"
    );
    assert_eq!(
        log.renew_run("run1", &ticket("a", 1), 9_000).await.unwrap(),
        Renewal::Lost,
        "nor renew"
    );
    assert!(log
        .update_operation("run1", &b.ticket, &state)
        .await
        .unwrap());
    assert!(log.request_cancel("run1").await.unwrap());
    assert_eq!(
        log.renew_run("run1", &b.ticket, 3_000).await.unwrap(),
        Renewal::Held {
            cancel_requested: true
        },
        "the runner sees a cancel requested elsewhere"
    );
    log.release_run("run1", &b.ticket).await.unwrap();
    assert_eq!(
        log.renew_run("run1", &b.ticket, 9_000).await.unwrap(),
        Renewal::Lost,
        "a renewal landing after the release does not revive the run"
    );
    let c = log
        .take_over("run1", &terms("c", 1_600))
        .await
        .unwrap()
        .expect("a released run is taken over at once");
    assert_eq!(c.ticket.attempt, 3);
    assert_eq!(c.crashes, 1, "a released run is no crash");
    assert!(c.cancel_requested, "the takeover sees the cancel request");
    let d = log
        .take_over("run1", &terms("d", 2_600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.crashes, 2, "the release was used up");
    let epochs = |e: &str| vec![("a/".to_owned(), e.to_owned())];
    assert!(
        !log.finish_operation("run1", &c.ticket, &phase_state("run1", true), &epochs("c"))
            .await
            .unwrap(),
        "a superseded runner cannot finish the operation"
    );
    assert!(
        log.lease_epochs("run1").await.unwrap().is_empty(),
        "nor record its lease epochs"
    );
    assert!(log
        .finish_operation("run1", &d.ticket, &phase_state("run1", true), &epochs("d"))
        .await
        .unwrap());
    assert_eq!(
        log.lease_epochs("run1").await.unwrap(),
        epochs("d"),
        "finishing records the lease epochs with the final state"
    );
    assert_eq!(
        log.take_over("run1", &terms("e", 99_999)).await.unwrap(),
        None,
        "a finished operation has no run to take"
    );
    assert!(
        !log.update_operation("run1", &d.ticket, &state)
            .await
            .unwrap(),
        "nor any more writes"
    );
    assert!(!log.request_cancel("run1").await.unwrap());
    assert_eq!(log.get_operation("run1").await.unwrap().unwrap().run, None);
}

pub(super) async fn operations_are_unique_per_request_id<I: OperationLog>(index: &I) {
    let op = |id: &str, rid: Option<&str>| OperationRecord {
        id: id.into(),
        request_id: rid.map(str::to_owned),
        request: warm_spec(rid),
        owner: None,
        state: OperationState::queued(id, 5),
        created_at: 5,
        resumptions: 0,
        run: Some(run_lease("r1", 1_000)),
    };
    assert_eq!(
        index
            .create_operation(&op("op1", Some("r1")))
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    match index
        .create_operation(&op("op2", Some("r1")))
        .await
        .unwrap()
    {
        CreateOutcome::Exists(existing) => assert_eq!(existing.id, "op1"),
        CreateOutcome::Created => panic!("a request id is owned by one operation"),
    }
    assert_eq!(
        index.create_operation(&op("op3", None)).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        index.create_operation(&op("op4", None)).await.unwrap(),
        CreateOutcome::Created,
        "operations without a request id never collide"
    );
    assert!(index.get_operation("op2").await.unwrap().is_none());
    let mut done = OperationState::queued("op1", 5).ended(Outcome::Succeeded, None);
    done.counters.objects_copied = 3;
    done.failures.push(KeyFailure {
        key: "k".into(),
        code: "AccessDenied".into(),
        message: "denied".into(),
    });
    assert!(index
        .update_operation("op1", &ticket("r1", 1), &done)
        .await
        .unwrap());
    let got = index.get_operation("op1").await.unwrap().unwrap();
    assert_eq!(got.state, done, "the state round-trips");
    assert_eq!(got.request, op("op1", Some("r1")).request);
}

pub(super) async fn operations_list_newest_first_resume_and_purge<I: OperationLog>(index: &I) {
    use crate::index::OpFilter;
    let rec = |id: &str, created_at: i64, done: bool| OperationRecord {
        id: id.into(),
        request_id: None,
        request: warm_spec(None),
        owner: None,
        state: phase_state(id, done),
        created_at,
        resumptions: 0,
        run: (!done).then(|| run_lease("r1", 1_000)),
    };
    for (id, t, done) in [
        ("l1", 100, true),
        ("l2", 200, false),
        ("l3", 300, true),
        ("l4", 300, false),
    ] {
        index.create_operation(&rec(id, t, done)).await.unwrap();
    }
    let ids = |v: Vec<OperationRecord>| {
        v.into_iter()
            .map(|r| r.id)
            .filter(|i| i.starts_with('l'))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(index
            .list_operations(OpFilter::All, None, 100)
            .await
            .unwrap()),
        ["l4", "l3", "l2", "l1"],
        "newest first, ties by id descending"
    );
    assert_eq!(
        ids(index
            .list_operations(OpFilter::Running, None, 100)
            .await
            .unwrap()),
        ["l4", "l2"]
    );
    assert_eq!(
        ids(index
            .list_operations(OpFilter::Finished, None, 100)
            .await
            .unwrap()),
        ["l3", "l1"]
    );
    let unfinished = |after, limit| async move {
        let listed = index.unfinished_operations(after, limit).await.unwrap();
        listed
            .into_iter()
            .filter(|(_, id)| id.starts_with('l'))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        unfinished(None, 100).await,
        [(300, "l4".to_owned()), (200, "l2".to_owned())],
        "the unfinished ones' ids and creation times, newest first, without their records"
    );
    assert_eq!(
        unfinished(Some((300, "l4".to_owned())), 100).await,
        [(200, "l2".to_owned())],
        "the cursor continues after the last one listed"
    );
    assert_eq!(
        index.unfinished_operations(None, 1).await.unwrap().len(),
        1,
        "at most the limit"
    );
    let first = index.list_operations(OpFilter::All, None, 2).await.unwrap();
    let cursor = first.last().map(|r| (r.created_at, r.id.clone()));
    assert_eq!(
        ids(index
            .list_operations(OpFilter::All, cursor, 100)
            .await
            .unwrap()),
        ["l2", "l1"],
        "the cursor continues after the last row"
    );
    assert_eq!(index.mark_resumed("l2").await.unwrap(), 1);
    assert_eq!(index.mark_resumed("l2").await.unwrap(), 2);
    assert_eq!(
        index
            .get_operation("l2")
            .await
            .unwrap()
            .unwrap()
            .resumptions,
        2
    );
    assert!(index
        .update_operation("l2", &ticket("r1", 1), &phase_state("l2", true))
        .await
        .unwrap());
    assert_eq!(
        ids(index
            .list_operations(OpFilter::Running, None, 100)
            .await
            .unwrap()),
        ["l4"],
        "DONE progress finishes it"
    );
    let purged = index.purge_operations(i64::MAX).await.unwrap();
    assert!(purged >= 3, "finished operations are purged");
    assert_eq!(
        ids(index
            .list_operations(OpFilter::All, None, 100)
            .await
            .unwrap()),
        ["l4"],
        "running ones are kept"
    );
}

pub(super) async fn a_finished_operation_can_be_superseded_once<I: OperationLog>(index: &I) {
    let op = |id: &str, done: bool| OperationRecord {
        id: id.into(),
        request_id: Some("sup".into()),
        request: warm_spec(Some("sup")),
        owner: None,
        state: phase_state(id, done),
        created_at: 7,
        resumptions: 0,
        run: (!done).then(|| run_lease("r1", 1_000)),
    };
    index.create_operation(&op("s1", false)).await.unwrap();
    assert!(
        !index
            .supersede_operation("s1", &op("s2", false))
            .await
            .unwrap(),
        "a running operation keeps its request id"
    );
    assert!(index
        .update_operation("s1", &ticket("r1", 1), &op("s1", true).state)
        .await
        .unwrap());
    assert!(index
        .supersede_operation("s1", &op("s2", false))
        .await
        .unwrap());
    assert!(
        !index
            .supersede_operation("s1", &op("s3", false))
            .await
            .unwrap(),
        "only one resubmission takes the request id over"
    );
    match index.create_operation(&op("s4", false)).await.unwrap() {
        CreateOutcome::Exists(e) => assert_eq!(e.id, "s2", "the request id moved"),
        CreateOutcome::Created => panic!("request id must be held by s2"),
    }
    assert!(
        index.get_operation("s1").await.unwrap().is_some(),
        "the old operation stays readable by id"
    );
    assert!(index.get_operation("s3").await.unwrap().is_none());
    let epochs = vec![
        ("a/".to_owned(), "e1".to_owned()),
        ("b/".to_owned(), "e2".to_owned()),
    ];
    index.set_lease_epochs("s2", &epochs).await.unwrap();
    assert_eq!(index.lease_epochs("s2").await.unwrap(), epochs);
    index.set_lease_epochs("s2", &epochs[..1]).await.unwrap();
    assert_eq!(
        index.lease_epochs("s2").await.unwrap(),
        epochs[..1],
        "setting replaces"
    );
    assert!(index.lease_epochs("s1").await.unwrap().is_empty());
}
