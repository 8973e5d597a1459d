//! One test per event of the Kafka host's core (and the rules the module doc names).

use super::*;
use crate::kafka::testkit::*;
use flashsale_proto::{CommandRecord, Reply, NO_REPLY};

fn cfg(adopt: bool) -> HostConfig {
    HostConfig {
        snapshot: SnapshotPolicy {
            every_commands: 3,
            every_ms: 60_000,
            retention_ms: None,
        },
        standby_window: 100,
        session_timeout_ms: 600,
        commit_every_ms: 100,
        min_tick_gap_ms: 200,
        adopt_new_topics: adopt,
    }
}

fn on(h: &mut Host, e: Event) -> Vec<Action> {
    let mut out = Vec::new();
    h.handle(e, &mut out);
    out
}

fn records(p: u32, recs: Vec<LogRecord>, claims: Vec<u64>) -> Event {
    Event::Records {
        partition: p,
        records: recs,
        claims,
        traces: Vec::new(),
    }
}

/// A host owning partition 0 from offset 0, claimed at `epoch`.
fn owning(epoch: u64) -> Host {
    let mut h = Host::new(cfg(false));
    on(
        &mut h,
        Event::Assigned {
            partition: 0,
            committed: 0,
            low: 0,
            high: 0,
            snapshot: None,
        },
    );
    on(
        &mut h,
        Event::Claimed {
            partition: 0,
            epoch,
        },
    );
    h
}

fn produced(actions: &[Action]) -> Vec<(BatchId, u64, &Applied)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Produce {
                batch,
                epoch,
                applied,
                ..
            } => Some((*batch, *epoch, applied)),
            _ => None,
        })
        .collect()
}

#[test]
fn standby_started_follows_the_partition_from_the_states_offset() {
    let mut h = Host::new(cfg(false));
    let a = on(
        &mut h,
        Event::StandbyStarted {
            partition: 2,
            state: State::new(2),
        },
    );
    assert!(matches!(
        a[..],
        [Action::Follow {
            partition: 2,
            from: 0
        }]
    ));
    assert!(h.standby(2).is_some());
}

#[test]
fn assigned_seeks_and_claims_and_applies_nothing_before_the_claim() {
    let mut h = Host::new(cfg(false));
    let a = on(
        &mut h,
        Event::Assigned {
            partition: 0,
            committed: 0,
            low: 0,
            high: 5,
            snapshot: None,
        },
    );
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Seek {
            partition: 0,
            offset: 0
        }
    )));
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Claim { partition: 0 })));
    assert_eq!(h.catching_up(), 1);
    let a = on(
        &mut h,
        records(0, vec![log_record(0, T0, &sale(1, 0, 1, 5))], vec![]),
    );
    assert!(
        produced(&a).is_empty(),
        "nothing is produced before the claim"
    );
    assert!(matches!(
        a[..],
        [Action::Seek {
            partition: 0,
            offset: 0
        }]
    ));
}

#[test]
fn claimed_records_are_applied_and_produced_with_the_epoch() {
    let mut h = owning(2);
    let a = on(
        &mut h,
        records(
            0,
            vec![
                log_record(0, T0, &sale(1, 0, 1, 5)),
                log_record(1, T0 + 1, &reserve(2, 0, 1, 1, 1)),
            ],
            vec![],
        ),
    );
    assert!(
        produced(&a).is_empty(),
        "held until our own claim is applied"
    );
    let a = on(
        &mut h,
        records(
            0,
            vec![log_record(2, T0 + 2, &CommandRecord::tick())],
            vec![2],
        ),
    );
    let p = produced(&a);
    assert_eq!(p.len(), 2, "the held batch, then the claim's");
    assert_eq!(p[0].1, 2, "outputs carry the owner epoch");
    assert_eq!(p[0].2.replies.len(), 2);
    assert!(matches!(p[0].2.replies[1].1.reply, Reply::Reserved { .. }));
}

#[test]
fn a_late_claimer_finds_another_claim_before_its_own_and_produces_nothing() {
    // Assigned when the log ended at 2; our claim reached the log (offset 3) after
    // another engine's (offset 2).
    let mut h = Host::new(cfg(false));
    on(
        &mut h,
        Event::Assigned {
            partition: 0,
            committed: 0,
            low: 0,
            high: 2,
            snapshot: None,
        },
    );
    on(
        &mut h,
        Event::Claimed {
            partition: 0,
            epoch: 3,
        },
    );
    let a = on(
        &mut h,
        records(
            0,
            vec![
                log_record(0, T0, &sale(1, 0, 1, 5)),
                log_record(1, T0, &reserve(2, 0, 1, 1, 1)),
                log_record(2, T0, &CommandRecord::tick()),
                log_record(3, T0, &CommandRecord::tick()),
            ],
            vec![2, 3],
        ),
    );
    assert!(produced(&a).is_empty(), "a late claimer produces nothing");
    assert!(!h.owns(0));
}

#[test]
fn only_acknowledged_batches_are_committed_in_order() {
    let mut h = owning(0);
    let a1 = on(
        &mut h,
        records(0, vec![log_record(0, T0, &sale(1, 0, 1, 5))], vec![]),
    );
    let a2 = on(
        &mut h,
        records(0, vec![log_record(1, T0, &reserve(2, 0, 1, 1, 1))], vec![]),
    );
    let (b1, b2) = (produced(&a1)[0].0, produced(&a2)[0].0);
    on(&mut h, Event::Acked { batch: b2 });
    let a = on(&mut h, Event::Tick { now: T0 + 1_000 });
    assert!(
        !a.iter().any(|a| matches!(a, Action::Commit { .. })),
        "a later batch acked before an earlier one commits nothing"
    );
    on(&mut h, Event::Acked { batch: b1 });
    let a = on(&mut h, Event::Tick { now: T0 + 2_000 });
    let commit = a.iter().find_map(|a| match a {
        Action::Commit { offsets, sync } => Some((offsets.clone(), *sync)),
        _ => None,
    });
    assert_eq!(commit, Some((vec![(0, 2)], false)));
}

#[test]
fn a_later_claim_fences_the_owner_and_the_partition_is_retaken_after_the_grace() {
    let mut h = owning(3);
    let a = on(
        &mut h,
        records(
            0,
            vec![
                log_record(4, T0, &sale(1, 0, 1, 5)),
                log_record(5, T0, &flashsale_proto::CommandRecord::tick()),
            ],
            vec![5],
        ),
    );
    assert!(produced(&a).is_empty(), "a fenced owner produces nothing");
    assert!(!h.owns(0));
    assert!(
        h.standby(0).is_some(),
        "it keeps following as a standby copy"
    );
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Follow { partition: 0, .. })));
    let a = on(&mut h, Event::Tick { now: 1_000 });
    assert!(!a.iter().any(|a| matches!(a, Action::Retake { .. })));
    let mut h2 = owning(3);
    on(&mut h2, Event::Tick { now: 10_000 });
    on(
        &mut h2,
        records(0, vec![log_record(9, T0, &CommandRecord::tick())], vec![9]),
    );
    let a = on(
        &mut h2,
        Event::Tick {
            now: 10_000 + 3 * 600,
        },
    );
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Retake { partition: 0 })));
}

#[test]
fn revoked_commits_what_is_acknowledged_snapshots_and_keeps_a_standby_copy() {
    let mut h = owning(0);
    // The first record is snapshotted at once (log time since the empty state).
    let a = on(
        &mut h,
        records(0, vec![log_record(0, T0, &sale(1, 0, 1, 5))], vec![]),
    );
    on(
        &mut h,
        Event::SnapshotStored {
            partition: 0,
            offset: 1,
        },
    );
    on(
        &mut h,
        Event::Acked {
            batch: produced(&a)[0].0,
        },
    );
    on(
        &mut h,
        records(
            0,
            vec![log_record(1, T0 + 1, &CommandRecord::tick())],
            vec![],
        ),
    );
    let a = on(
        &mut h,
        Event::Revoked {
            partitions: vec![0],
            lost: false,
        },
    );
    assert!(matches!(a[0], Action::Commit { ref offsets, sync: true } if offsets == &vec![(0, 1)]));
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Snapshot { partition: 0, .. })));
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Follow {
            partition: 0,
            from: 2
        }
    )));
    // Outputs of offset 1 were not acknowledged: the copy does not count them as
    // produced, so a takeover at the commit (1) replays them from a snapshot.
    assert_eq!(h.standby(0).map(|s| s.covered_from), Some(2));
    assert_eq!(h.snapshot_wanted(0, 1, 0), Some(0));
    assert!(!h.owns(0));
}

#[test]
fn a_lost_assignment_commits_nothing() {
    let mut h = owning(0);
    let a = on(
        &mut h,
        records(0, vec![log_record(0, T0, &sale(1, 0, 1, 5))], vec![]),
    );
    on(
        &mut h,
        Event::Acked {
            batch: produced(&a)[0].0,
        },
    );
    let a = on(
        &mut h,
        Event::Revoked {
            partitions: vec![0],
            lost: true,
        },
    );
    assert!(!a.iter().any(|a| matches!(a, Action::Commit { .. })));
}

#[test]
fn a_refused_produce_fails_the_engine_and_nothing_follows() {
    let mut h = owning(0);
    let a = on(
        &mut h,
        records(0, vec![log_record(0, T0, &sale(1, 0, 1, 5))], vec![]),
    );
    let a = on(
        &mut h,
        Event::ProduceFailed {
            batch: produced(&a)[0].0,
            error: "refused".into(),
        },
    );
    assert!(matches!(a[..], [Action::Fail { .. }]));
    assert!(h.has_failed());
    let a = on(
        &mut h,
        records(0, vec![log_record(1, T0, &reserve(2, 0, 1, 1, 1))], vec![]),
    );
    assert!(a.is_empty(), "a failed engine produces nothing more");
}

#[test]
fn ticks_are_produced_while_holds_are_due_one_at_a_time() {
    let mut h = owning(0);
    on(
        &mut h,
        records(
            0,
            vec![
                log_record(0, T0, &sale(1, 0, 1, 5)),
                log_record(1, T0, &reserve(2, 0, 1, 1, 1)),
            ],
            vec![],
        ),
    );
    let due = T0 + 31_000;
    let ticks = |a: &[Action]| {
        a.iter()
            .filter(|a| matches!(a, Action::ProduceTick { .. }))
            .count()
    };
    assert_eq!(
        ticks(&on(&mut h, Event::Tick { now: T0 + 1_000 })),
        0,
        "nothing due yet"
    );
    assert_eq!(ticks(&on(&mut h, Event::Tick { now: due })), 1);
    assert_eq!(
        ticks(&on(&mut h, Event::Tick { now: due + 1_000 })),
        0,
        "one in flight"
    );
    on(&mut h, Event::TickDone { partition: 0 });
    assert_eq!(ticks(&on(&mut h, Event::Tick { now: due + 2_000 })), 1);
}

#[test]
fn one_snapshot_at_a_time_and_the_next_once_stored() {
    let mut h = owning(0);
    let recs: Vec<LogRecord> = (0..3)
        .map(|i| log_record(i, T0, &CommandRecord::tick()))
        .collect();
    let snaps = |a: &[Action]| {
        a.iter()
            .filter(|a| matches!(a, Action::Snapshot { .. }))
            .count()
    };
    assert_eq!(
        snaps(&on(&mut h, records(0, recs, vec![]))),
        1,
        "due after 3 records"
    );
    let more: Vec<LogRecord> = (3..6)
        .map(|i| log_record(i, T0, &CommandRecord::tick()))
        .collect();
    assert_eq!(
        snaps(&on(&mut h, records(0, more, vec![]))),
        0,
        "one is being written"
    );
    on(
        &mut h,
        Event::SnapshotStored {
            partition: 0,
            offset: 3,
        },
    );
    on(
        &mut h,
        Event::SnapshotFailed {
            partition: 0,
            error: "x".into(),
        },
    );
    let more: Vec<LogRecord> = (6..9)
        .map(|i| log_record(i, T0, &CommandRecord::tick()))
        .collect();
    assert_eq!(snaps(&on(&mut h, records(0, more, vec![]))), 1);
}

#[test]
fn a_quiet_partition_gets_a_snapshot_on_the_clock() {
    let mut h = owning(0);
    on(
        &mut h,
        records(0, vec![log_record(0, T0, &sale(1, 0, 1, 5))], vec![]),
    );
    on(
        &mut h,
        Event::SnapshotStored {
            partition: 0,
            offset: 1,
        },
    );
    let a = on(
        &mut h,
        records(
            0,
            vec![log_record(1, T0 + 1, &CommandRecord::tick())],
            vec![],
        ),
    );
    assert!(!a.iter().any(|a| matches!(a, Action::Snapshot { .. })));
    let a = on(&mut h, Event::Tick { now: T0 + 1_000 });
    assert!(!a.iter().any(|a| matches!(a, Action::Snapshot { .. })));
    let a = on(&mut h, Event::Tick { now: T0 + 60_001 });
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Snapshot { partition: 0, .. })));
}

#[test]
fn a_recreated_topic_lets_go_reports_not_ready_and_restarts_only_if_adopting() {
    for adopt in [false, true] {
        let mut h = owning(0);
        h.cfg.adopt_new_topics = adopt;
        let id = |id: &str| Event::TopicId {
            topic: "t.commands".into(),
            id: id.into(),
        };
        assert!(on(&mut h, id("A")).is_empty());
        assert!(on(&mut h, id("A")).is_empty());
        let a = on(&mut h, id("B"));
        assert!(
            matches!(a[0], Action::NotReady { reason: Some(ref r) } if r.contains("A") && r.contains("B"))
        );
        assert_eq!(a.iter().any(|a| matches!(a, Action::Restart { .. })), adopt);
        assert!(!a.iter().any(|a| matches!(a, Action::Commit { .. })));
        assert!(!h.owns(0));
        assert!(h.not_ready().is_some());
        assert!(on(&mut h, id("B")).is_empty(), "said once");
    }
}

#[test]
fn a_takeover_from_a_standby_copy_reproduces_its_outputs_from_the_committed_offset() {
    let mut h = Host::new(cfg(false));
    on(
        &mut h,
        Event::StandbyStarted {
            partition: 0,
            state: State::new(0),
        },
    );
    on(
        &mut h,
        Event::StandbyRecords {
            partition: 0,
            records: vec![
                log_record(0, T0, &sale(1, 0, 1, 5)),
                log_record(1, T0, &reserve(2, 0, 1, 1, 1)),
            ],
        },
    );
    assert_eq!(
        h.snapshot_wanted(0, 1, 0),
        None,
        "the copy is past the commit"
    );
    let a = on(
        &mut h,
        Event::Assigned {
            partition: 0,
            committed: 1,
            low: 0,
            high: 2,
            snapshot: None,
        },
    );
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Unfollow { partition: 0 })));
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Seek {
            partition: 0,
            offset: 2
        }
    )));
    let a = on(
        &mut h,
        Event::Claimed {
            partition: 0,
            epoch: 2,
        },
    );
    assert!(produced(&a).is_empty(), "held until the claim is applied");
    let a = on(
        &mut h,
        records(0, vec![log_record(2, T0, &CommandRecord::tick())], vec![2]),
    );
    let p = produced(&a);
    assert_eq!(p.len(), 2);
    assert_eq!(
        p[0].2.replies.len(),
        1,
        "only the reply at or past the commit"
    );
    assert_eq!(p[0].2.replies[0].1.offset, 1);
}

#[test]
fn outputs_below_the_committed_offset_are_not_produced_again() {
    let mut h = Host::new(cfg(false));
    on(
        &mut h,
        Event::Assigned {
            partition: 0,
            committed: 1,
            low: 0,
            high: 2,
            snapshot: None,
        },
    );
    on(
        &mut h,
        Event::Claimed {
            partition: 0,
            epoch: 2,
        },
    );
    let a = on(
        &mut h,
        records(
            0,
            vec![
                log_record(0, T0, &sale(1, 0, 1, 5)),
                log_record(1, T0, &reserve(2, 0, 1, 1, 1)),
                log_record(2, T0, &CommandRecord::tick()),
            ],
            vec![2],
        ),
    );
    let p = produced(&a);
    assert_eq!(p[0].2.replies.len(), 1);
    assert!(p[0].2.events.iter().all(|e| e.offset >= 1));
    assert_eq!(h.catching_up(), 0, "caught up with the end at assignment");
}

#[test]
fn a_log_whose_start_was_deleted_behind_the_snapshot_fails_the_engine() {
    let mut h = Host::new(cfg(false));
    let a = on(
        &mut h,
        Event::Assigned {
            partition: 0,
            committed: 10,
            low: 5,
            high: 12,
            snapshot: None,
        },
    );
    assert!(matches!(a[..], [Action::Fail { .. }]));
}

#[test]
fn ticks_have_no_reply_and_records_of_partitions_not_owned_are_ignored() {
    let mut h = owning(0);
    let a = on(
        &mut h,
        records(1, vec![log_record(0, T0, &sale(1, 0, 1, 5))], vec![]),
    );
    assert!(a.is_empty());
    let a = on(
        &mut h,
        records(0, vec![log_record(0, T0, &CommandRecord::tick())], vec![]),
    );
    assert!(produced(&a)[0].2.replies.is_empty());
    assert_eq!(sale(1, NO_REPLY, 1, 1).reply_to, NO_REPLY);
}
