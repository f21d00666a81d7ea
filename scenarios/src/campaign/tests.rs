use super::*;
use proptest::strategy::ValueTree;

fn base() -> CampaignBase {
    CampaignBase::new(&Scenario::builtin(DEFAULT_BASE).unwrap()).unwrap()
}

fn every_kind() -> Schedule {
    Schedule {
        ops: vec![
            Op::WireFaults {
                nic: "nic0".into(),
                faults: FaultSpec {
                    seed: 7,
                    drop_ppm: 12_345,
                    corrupt_ppm: 1,
                    duplicate_ppm: 200_000,
                    reorder_ppm: 3,
                    delay_us: 40,
                    jitter_us: 9,
                    direction: FaultDirection::BToA,
                    link_down: Some((5, 10)),
                },
            },
            Op::Transfer {
                bytes: 3 * TRANSFER_UNIT,
                seed: 5,
                unbind_after: Some(1000),
                rebind: true,
                close_after: None,
            },
            Op::WireLink {
                nic: "nic1".into(),
                up: false,
            },
            Op::Pause { ms: 20 },
            Op::WireLink {
                nic: "nic1".into(),
                up: true,
            },
            Op::GuestLink {
                nic: "nic1".into(),
                up: false,
            },
            Op::Channels {
                nic: "nic0".into(),
                queues: 2,
            },
            Op::Rings {
                nic: "nic1".into(),
                rx: 512,
                tx: 1024,
            },
            Op::WireFaults {
                nic: "nic1".into(),
                faults: FaultSpec::default(),
            },
            Op::Transfer {
                bytes: TRANSFER_UNIT,
                seed: 6,
                unbind_after: None,
                rebind: false,
                close_after: Some(4096),
            },
            Op::NicFaults {
                nic: "nic0".into(),
                faults: vec![
                    NicFault::RxStarve {
                        after: 100,
                        frames: 20,
                    },
                    NicFault::DmaFault {
                        dir: QueueDir::Rx,
                        queue: 3,
                        after: 0,
                    },
                ],
            },
            Op::NicFaults {
                nic: "nic1".into(),
                faults: vec![],
            },
            Op::NetkitDelete { dev: "nkh".into() },
        ],
    }
}

#[test]
fn the_default_base_gives_setup_template_and_targets() {
    let b = base();
    assert_eq!(b.setup.len(), 9);
    assert!(
        b.setup
            .iter()
            .all(|s| !matches!(s.kind, StepKind::TcpTransfer { .. }))
    );
    assert!(matches!(b.transfer.kind, StepKind::TcpTransfer { .. }));
    assert_eq!(b.wired, ["nic0", "nic1"]);
    assert_eq!(b.netns_of("nic1").as_deref(), Some("remote"));
    assert_eq!(b.netns_of("nic0"), None);
    assert_eq!(b.max_units, 256);
    assert!(b.devmem_tx().is_some());
    let mut no_transfer = Scenario::builtin("nic-smoke").unwrap();
    no_transfer
        .steps
        .retain(|s| !matches!(s.kind, StepKind::TcpTransfer { .. }));
    assert_eq!(
        CampaignBase::new(&no_transfer).unwrap_err(),
        CampaignError::NoTransfer("nic-smoke".into())
    );
    let mut no_wire = Scenario::builtin("nic-smoke").unwrap();
    no_wire.topology.wires.clear();
    assert!(matches!(
        CampaignBase::new(&no_wire),
        Err(CampaignError::NoWire(_))
    ));
}

#[test]
fn a_case_scenario_validates_replays_and_reads_back() {
    let b = base();
    let sched = every_kind();
    let scn = sched.to_scenario(&b, "case-x", "test");
    let text = toml::to_string(&scn).unwrap();
    let again = Scenario::parse(&text, "case-x.toml").unwrap();
    assert_eq!(again, scn);
    assert_eq!(Schedule::from_scenario(&b, &again).unwrap(), sched);
    // Setup first, then one step per op.
    assert_eq!(again.steps.len(), b.setup.len() + sched.ops.len());
    assert_eq!(&again.steps[..b.setup.len()], &b.setup[..]);
    // Every case step may fail on every kernel; the baseline's
    // expected-fail was about the base's transfer, which is not a setup
    // step.
    for k in ["patched", "baseline", "default"] {
        let e = again.expectation(k);
        assert_eq!(e.any_outcome.len(), sched.ops.len(), "{k}");
        assert_eq!(e.verdict, ExpectedVerdict::Pass, "{k}");
        assert!(e.bindings.is_empty());
        for s in &again.steps[b.setup.len()..] {
            assert!(e.any_outcome.contains(&s.name), "{k}: {}", s.name);
        }
    }
    // Transfers: their own ports, the op's bytes/seed, devmem kept.
    let transfers: Vec<_> = again
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::TcpTransfer {
                port,
                bytes,
                seed,
                devmem_tx,
                from_netns,
                close_after,
                ..
            } => Some((
                *port,
                *bytes,
                *seed,
                devmem_tx.clone().unwrap(),
                from_netns.clone(),
                *close_after,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(transfers.len(), 2);
    assert_eq!((transfers[0].0, transfers[1].0), (5201, 5202));
    assert_eq!((transfers[0].1, transfers[0].2), (3 * TRANSFER_UNIT, 5));
    assert_eq!(transfers[0].3.unbind_after, Some(1000));
    assert!(transfers[0].3.rebind);
    assert_eq!(transfers[0].5, None);
    assert_eq!(transfers[1].3.unbind_after, None);
    assert!(!transfers[1].3.rebind);
    assert_eq!(transfers[1].5, Some(4096));
    assert!(
        again
            .steps
            .iter()
            .any(|s| s.name.ends_with("unbind after 1000, re-bind")),
        "{:?}",
        again.steps.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(transfers[0].3.dev, "nkg");
    assert_eq!(transfers[0].4.as_deref(), Some("container"));
    // Guest operations run in the NIC's netns with the placeholder.
    let link = again
        .steps
        .iter()
        .find(|s| s.name.contains("guest: nic1 down"))
        .unwrap();
    match &link.kind {
        StepKind::Sh { argv, netns, .. } => {
            assert_eq!(netns.as_deref(), Some("remote"));
            assert_eq!(
                argv.as_deref().unwrap(),
                ["ip", "link", "set", "dev", "{nic1}", "down"]
            );
        }
        k => panic!("{k:?}"),
    }
    // The wire faults are the ppm values as probabilities.
    match &again.steps[b.setup.len()].kind {
        StepKind::Wire {
            nic,
            faults: Some(f),
            link: None,
        } => {
            assert_eq!(nic, "nic0");
            assert_eq!(f.drop, 0.012345);
            assert_eq!(f.duplicate, 0.2);
            assert_eq!(
                f.link_down,
                [LinkWindow {
                    at_ms: 5,
                    duration_ms: 10
                }]
            );
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn from_scenario_refuses_what_a_campaign_does_not_write() {
    let b = base();
    let mut scn = every_kind().to_scenario(&b, "c", "");
    scn.steps[0].name = "renamed".into();
    assert!(matches!(
        Schedule::from_scenario(&b, &scn),
        Err(CampaignError::NotFromBase(_))
    ));
    for kind in [
        StepKind::Sh {
            script: Some("reboot".into()),
            argv: None,
            netns: None,
            expect_exit: 0,
        },
        StepKind::Sh {
            script: None,
            argv: Some(vec![
                "ip".into(),
                "link".into(),
                "set".into(),
                "dev".into(),
                "eth0".into(),
                "up".into(),
            ]),
            netns: None,
            expect_exit: 0,
        },
        StepKind::Ping {
            netns: None,
            to: "::1".into(),
            count: 1,
        },
        StepKind::Wire {
            nic: "nic0".into(),
            link: Some(LinkState::Up),
            faults: Some(WireFaults::none()),
        },
        StepKind::Wire {
            nic: "nic0".into(),
            link: None,
            faults: Some(WireFaults {
                drop: 0.1234567,
                ..WireFaults::none()
            }),
        },
        StepKind::Wire {
            nic: "nic0".into(),
            link: None,
            faults: Some(WireFaults {
                max_faults: Some(3),
                ..WireFaults::none()
            }),
        },
    ] {
        let mut s = every_kind().to_scenario(&b, "c", "");
        s.steps.push(Step {
            name: "extra".into(),
            timeout_s: None,
            kind: kind.clone(),
        });
        assert!(
            matches!(
                Schedule::from_scenario(&b, &s),
                Err(CampaignError::NotAnOp { .. })
            ),
            "{kind:?}"
        );
    }
}

#[test]
fn every_drawn_schedule_is_a_valid_scenario_that_reads_back() {
    let b = base();
    let strat = strategy::schedule(&b, 8);
    let mut runner = TestRunner::new_with_rng(
        runner_config(&CampaignConfig {
            cases: 128,
            ..CampaignConfig::default()
        }),
        rng_for(1),
    );
    let drawn = std::cell::RefCell::new((0u32, 0u32));
    runner
        .run(&strat, |sched| {
            let scn = sched.to_scenario(&b, "drawn", "");
            let text = toml::to_string(&scn).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = Scenario::parse(&text, "drawn.toml")
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&again, &scn);
            prop_assert_eq!(Schedule::from_scenario(&b, &again).unwrap(), sched.clone());
            prop_assert!(!sched.ops.is_empty() && sched.ops.len() <= 8);
            for op in &sched.ops {
                if let Op::Transfer {
                    bytes,
                    unbind_after,
                    rebind,
                    close_after,
                    ..
                } = op
                {
                    prop_assert!(*bytes >= TRANSFER_UNIT && *bytes <= 256 * TRANSFER_UNIT);
                    prop_assert!(unbind_after.is_none_or(|u| u >= 1 && u < *bytes));
                    prop_assert!(close_after.is_none_or(|c| c >= 1 && c < *bytes));
                    // A re-bind only follows an unbind.
                    prop_assert!(!rebind || unbind_after.is_some());
                    let mut d = drawn.borrow_mut();
                    d.0 += u32::from(*rebind);
                    d.1 += u32::from(close_after.is_some());
                }
            }
            Ok(())
        })
        .unwrap();
    // Both transfer faults are drawn.
    let (rebinds, closes) = drawn.into_inner();
    assert!(
        rebinds > 0 && closes > 0,
        "{rebinds} re-binds, {closes} closes"
    );
}

/// Fails (invariant "payload-integrity") when some wire drops at least 5 %
/// and a later transfer moves at least two units.
fn lossy_then_big(s: &Schedule) -> Result<(), CaseFailure> {
    let lossy = s
        .ops
        .iter()
        .position(|o| matches!(o, Op::WireFaults { faults, .. } if faults.drop_ppm >= 50_000));
    let big = s
        .ops
        .iter()
        .rposition(|o| matches!(o, Op::Transfer { bytes, .. } if *bytes >= 2 * TRANSFER_UNIT));
    match (lossy, big) {
        (Some(l), Some(t)) if l < t => Err(CaseFailure {
            invariant: "payload-integrity".into(),
            detail: format!("{} ops", s.ops.len()),
        }),
        _ => Ok(()),
    }
}

#[test]
fn shrinking_reaches_the_minimal_failing_schedule() {
    let b = base();
    let cfg = CampaignConfig {
        cases: 500,
        seed: 42,
        max_ops: 8,
        max_shrink_iters: 5_000,
        ..CampaignConfig::default()
    };
    let mut seen = Vec::new();
    let out = run_campaign(
        &cfg,
        &strategy::schedule(&b, cfg.max_ops),
        lossy_then_big,
        |p| seen.push(p),
    );
    let found = out.found.expect("a failing schedule among 500 cases");
    assert!(lossy_then_big(&found.original).is_err());
    assert_eq!(
        found.minimal,
        Schedule {
            ops: vec![
                Op::WireFaults {
                    nic: "nic0".into(),
                    faults: FaultSpec {
                        drop_ppm: 50_000,
                        ..FaultSpec::default()
                    },
                },
                Op::Transfer {
                    bytes: 2 * TRANSFER_UNIT,
                    seed: 1,
                    unbind_after: None,
                    rebind: false,
                    close_after: None,
                },
            ],
        },
        "from {:#?}",
        found.original
    );
    assert_eq!(found.failure.invariant, "payload-integrity");
    assert_eq!(found.failure.detail, "2 ops");
    // Progress was reported after every case, counting violations.
    assert_eq!(seen.len() as u32, out.cases_run);
    assert_eq!(seen.last().unwrap().violations, out.violations);
    assert!(out.violations >= 2, "the original and at least the minimal");
    let first_bad = seen.iter().position(|p| p.violations == 1).unwrap();
    assert!(seen[..first_bad].iter().all(|p| !p.shrinking));
    assert!(seen[first_bad..].iter().all(|p| p.shrinking));
    assert_eq!(out.aborted, None);
}

#[test]
fn shrinking_stays_on_the_invariant_it_found() {
    let b = base();
    // Any pause violates "liveness"; lossy-then-big violates payload
    // integrity. Shrinking a payload failure must not end on a pause.
    let run = |s: &Schedule| {
        lossy_then_big(s)?;
        if s.ops.iter().any(|o| matches!(o, Op::Pause { .. })) {
            return Err(CaseFailure {
                invariant: "liveness".into(),
                detail: String::new(),
            });
        }
        Ok(())
    };
    let cfg = CampaignConfig {
        cases: 500,
        seed: 42,
        max_ops: 8,
        max_shrink_iters: 5_000,
        ..CampaignConfig::default()
    };
    let out = run_campaign(&cfg, &strategy::schedule(&b, 8), run, |_| {});
    let f = out.found.unwrap();
    assert_eq!(f.failure.invariant, f.original_failure.invariant);
    assert!(run(&f.minimal).is_err());
    assert_eq!(run(&f.minimal).unwrap_err().invariant, f.failure.invariant);
}

#[test]
fn a_seed_reproduces_the_same_cases() {
    let b = base();
    let strat = strategy::schedule(&b, 8);
    let cases = |seed: u64| {
        let mut got = Vec::new();
        let out = run_campaign(
            &CampaignConfig {
                cases: 20,
                seed,
                ..CampaignConfig::default()
            },
            &strat,
            |s| {
                got.push(s.clone());
                Ok(())
            },
            |_| {},
        );
        assert_eq!(out.cases_run, 20);
        assert_eq!(out.found, None);
        got
    };
    let a = cases(7);
    assert_eq!(a.len(), 20);
    assert_eq!(a, cases(7));
    assert_ne!(a, cases(8));
    // The same seed draws the same first value tree directly too.
    let mut r1 = TestRunner::new_with_rng(Config::default(), rng_for(3));
    let mut r2 = TestRunner::new_with_rng(Config::default(), rng_for(3));
    assert_eq!(
        strat.new_tree(&mut r1).unwrap().current(),
        strat.new_tree(&mut r2).unwrap().current()
    );
}

#[test]
fn a_written_regression_replays_to_the_minimal_schedule() {
    let b = base();
    let minimal = Schedule {
        ops: vec![
            Op::WireFaults {
                nic: "nic0".into(),
                faults: FaultSpec {
                    drop_ppm: 50_000,
                    ..FaultSpec::default()
                },
            },
            Op::Transfer {
                bytes: 2 * TRANSFER_UNIT,
                seed: 1,
                unbind_after: None,
                rebind: false,
                close_after: None,
            },
        ],
    };
    let found = Found {
        original: every_kind(),
        original_failure: CaseFailure {
            invariant: "payload-integrity".into(),
            detail: "x".into(),
        },
        minimal: minimal.clone(),
        failure: CaseFailure {
            invariant: "payload-integrity".into(),
            detail: "bytes 65536..131072 missing\nno error at the sender".into(),
        },
    };
    let dir = std::env::temp_dir().join(format!("netmem-campaign-{}", std::process::id()));
    let name = regression_name(&b.scenario.name, 42);
    assert_eq!(name, "netkit-devmem-tx-seed42");
    let path = write_regression(&dir, &name, &b, &found, 42, "patched").unwrap();
    assert_eq!(path, dir.join("netkit-devmem-tx-seed42.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(
        "# Found by `netmem-lab campaign --scenario netkit-devmem-tx --seed 42 --kernel patched`"
    ));
    assert!(text.contains("# Violated invariant: payload-integrity\n"));
    assert!(text.contains("# no error at the sender\n"), "{text}");
    assert!(
        text.contains("#   01: transfer 131072 bytes (seed 1)\n"),
        "{text}"
    );
    let scn = Scenario::from_file(&path).unwrap();
    assert_eq!(scn.name, name);
    assert!(scn.description.contains("payload-integrity"));
    assert_eq!(Schedule::from_scenario(&b, &scn).unwrap(), minimal);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fault_specs_convert_exactly() {
    let f = FaultSpec {
        seed: 1,
        drop_ppm: 1,
        corrupt_ppm: 999_999,
        duplicate_ppm: 123_456,
        reorder_ppm: 0,
        delay_us: 5,
        jitter_us: 6,
        direction: FaultDirection::AToB,
        link_down: Some((1, 2)),
    };
    let w = f.to_wire_faults();
    assert_eq!(w.drop, 1e-6);
    assert!(w.validate().is_ok());
    assert_eq!(FaultSpec::from_wire_faults(&w), Some(f));
    assert_eq!(
        FaultSpec::from_wire_faults(&WireFaults::none()),
        Some(FaultSpec::default())
    );
    let two = WireFaults {
        link_down: vec![LinkWindow::default(), LinkWindow::default()],
        ..WireFaults::none()
    };
    assert_eq!(FaultSpec::from_wire_faults(&two), None);
}

#[test]
fn case_failures_come_from_the_report() {
    use serde_json::json;
    let pass = json!({"verdict": "pass", "invariants": [
        {"name": "bound-device-only", "ok": true, "checked": true, "detail": "no violation"},
        {"name": "payload-intact", "ok": true, "checked": true, "detail": "x"}]});
    assert_eq!(case_failure(&pass), None);
    let unchecked = json!({"verdict": "pass", "invariants": [
        {"name": "no-stray-dma", "ok": false, "checked": false, "detail": "not checked"}]});
    assert_eq!(case_failure(&unchecked), None);
    let bad = json!({"verdict": "fail", "invariants": [
        {"name": "bound-device-only", "ok": true, "checked": true, "detail": ""},
        {"name": "payload-intact", "ok": false, "checked": true, "detail": "10 bytes sent, 4 verified"},
        {"name": "audit-complete", "ok": false, "checked": true, "detail": "lost"}]});
    assert_eq!(
        case_failure(&bad),
        Some(CaseFailure {
            invariant: "payload-intact".into(),
            detail: "10 bytes sent, 4 verified".into()
        })
    );
    let died = json!({"verdict": "error", "error": "the guest ended mid-run: triple fault"});
    assert_eq!(case_failure(&died).unwrap().invariant, RUN_COMPLETED);
    assert!(case_failure(&died).unwrap().detail.contains("triple fault"));
}

#[test]
fn the_base_names_its_netkit_primary() {
    assert_eq!(base().netkit_primary.as_deref(), Some("nkh"));
    assert_eq!(
        CampaignBase::new(&Scenario::builtin("nic-smoke").unwrap())
            .unwrap()
            .netkit_primary,
        None
    );
}

#[test]
fn a_plain_base_draws_closes_but_no_unbind_or_rebind() {
    let b = CampaignBase::new(&Scenario::builtin("nic-smoke").unwrap()).unwrap();
    assert!(b.devmem_tx().is_none());
    let cfg = CampaignConfig {
        cases: 64,
        seed: 3,
        ..CampaignConfig::default()
    };
    let mut closes = 0;
    for sched in drawn(&b, &cfg) {
        for op in &sched.ops {
            if let Op::Transfer {
                unbind_after,
                rebind,
                close_after,
                ..
            } = op
            {
                assert_eq!((*unbind_after, *rebind), (None, false));
                closes += usize::from(close_after.is_some());
            }
        }
        let scn = sched.to_scenario(&b, "plain", "");
        let again = Scenario::parse(&toml::to_string(&scn).unwrap(), "plain.toml").unwrap();
        assert_eq!(Schedule::from_scenario(&b, &again).unwrap(), sched);
    }
    assert!(closes > 0);
}

#[test]
fn nic_fault_and_netkit_ops_are_steps_the_lab_runs() {
    let b = base();
    let scn = every_kind().to_scenario(&b, "case-y", "");
    let n = b.setup.len();
    let ops = &every_kind().ops;
    let at = |pred: &dyn Fn(&Op) -> bool| n + ops.iter().position(pred).unwrap();
    let nf = &scn.steps[at(&|o| matches!(o, Op::NicFaults { faults, .. } if !faults.is_empty()))];
    assert_eq!(nf.kind.name(), "nic-fault");
    let text = toml::to_string(&scn).unwrap();
    assert!(
        text.contains(r#"faults = ["rx-starve:100:20", "dma-fault:rx:3:0"]"#),
        "{text}"
    );
    let del = &scn.steps[at(&|o| matches!(o, Op::NetkitDelete { .. }))];
    match &del.kind {
        StepKind::Sh {
            argv: Some(a),
            netns: None,
            ..
        } => assert_eq!(a[1..], ["netkit-del", "--dev", "nkh"]),
        k => panic!("{k:?}"),
    }
}

/// Draws the schedules a campaign with `cfg` runs (every case passing).
fn drawn(b: &CampaignBase, cfg: &CampaignConfig) -> Vec<Schedule> {
    let mut all = Vec::new();
    let out = run_campaign(
        cfg,
        &strategy::campaign_schedule(b, cfg),
        |s: &Schedule| {
            all.push(s.clone());
            Ok(())
        },
        |_| {},
    );
    assert_eq!(out.cases_run as usize, all.len());
    all
}

#[test]
fn twenty_cases_of_six_ops_ask_for_every_fault_kind() {
    let b = base();
    let cfg = CampaignConfig {
        cases: 20,
        seed: 1,
        max_ops: 6,
        ..CampaignConfig::default()
    };
    let cases = drawn(&b, &cfg);
    assert_eq!(cases.len(), 20);
    let mut kinds = BTreeSet::new();
    for c in &cases {
        kinds.extend(c.requested_fault_kinds());
    }
    // (97 of seeds 0..100 give every kind; seed 1 does.)
    let want: BTreeSet<&str> = FAULT_KINDS
        .iter()
        .copied()
        .filter(|k| *k != "dma-foreign-iova")
        .collect();
    assert_eq!(kinds, want, "seed 1, 20 cases of at most 6 ops");
    // Drawn NIC faults stay in the safe ranges.
    for op in cases.iter().flat_map(|c| &c.ops) {
        if let Op::NicFaults { faults, .. } = op {
            for f in faults {
                match *f {
                    NicFault::DmaForeignIova { .. } => panic!("drawn: {f}"),
                    NicFault::TxCompletionDelay { ms } => {
                        assert!((1..=MAX_TX_COMPLETION_DELAY_MS).contains(&ms))
                    }
                    NicFault::DmaFault { queue, .. } => {
                        assert!(queue < MAX_FAULT_QUEUES || queue == sim_nic::faults::ANY_QUEUE)
                    }
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn test_faults_open_every_case_and_survive_shrinking() {
    let b = base();
    let foreign = NicFault::DmaForeignIova { after: 0 };
    let cfg = CampaignConfig {
        cases: 16,
        seed: 4,
        max_ops: 6,
        test_faults: vec![foreign],
        ..CampaignConfig::default()
    };
    let prefix = Op::NicFaults {
        nic: "nic0".into(),
        faults: vec![foreign],
    };
    for c in drawn(&b, &cfg) {
        assert_eq!(c.ops[0], prefix);
        assert!(c.requested_fault_kinds().contains("dma-foreign-iova"));
    }
    // A violation needing the fault and a transfer shrinks to exactly
    // those, and the regression replays to them.
    let out = run_campaign(
        &cfg,
        &strategy::campaign_schedule(&b, &cfg),
        |s: &Schedule| {
            let armed = s.ops.iter().any(|o| o == &prefix);
            let sent = s.ops.iter().any(|o| matches!(o, Op::Transfer { .. }));
            if armed && sent {
                Err(CaseFailure {
                    invariant: "iova-owned".into(),
                    detail: "foreign IOVA".into(),
                })
            } else {
                Ok(())
            }
        },
        |_| {},
    );
    let found = out.found.expect("a violation");
    assert_eq!(found.minimal.ops.len(), 2, "{:?}", found.minimal);
    assert_eq!(found.minimal.ops[0], prefix);
    assert!(matches!(found.minimal.ops[1], Op::Transfer { .. }));
    let dir = std::env::temp_dir().join(format!("campaign-test-faults-{}", std::process::id()));
    let path = write_regression(&dir, "tf", &b, &found, 4, "patched").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let again = Scenario::parse(&text, "tf.toml").unwrap();
    assert_eq!(Schedule::from_scenario(&b, &again).unwrap(), found.minimal);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn injected_fault_counts_sum_the_stats_of_nics_and_wires() {
    let nic = |f: &dyn Fn(&mut sim_nic::NicStats)| {
        let mut s = sim_nic::NicStats::default();
        f(&mut s);
        serde_json::to_value(s).unwrap()
    };
    let wire = |f: &dyn Fn(&mut sim_nic::FaultCounters)| {
        let mut c = sim_nic::FaultCounters::default();
        f(&mut c);
        serde_json::json!({"a": "nic0", "b": "nic1", "faults": serde_json::to_value(c).unwrap(), "link_up": true})
    };
    let stats = serde_json::json!({
        "nics": {
            "nic0": nic(&|s| {
                s.tx_completions_delayed = 40;
                s.reset_requests = 1;
                s.injected_dma_faults = 1;
                s.tx_foreign_iova_reads = 7;
                s.rx_no_buffers = 99; // not a fault by itself
            }),
            "nic1": nic(&|s| {
                s.rx_starved = 20;
                s.injected_dma_faults = 2;
            }),
        },
        "wires": [
            wire(&|c| {
                c.dropped = 3;
                c.corrupted = 4;
                c.duplicated = 5;
                c.reordered = 6;
                c.delayed = 8;
                c.link_downs = 2;
                c.link_down_drops = 50;
            }),
            wire(&|c| c.dropped = 10),
        ],
    });
    let got = injected_fault_counts(&stats);
    let want: BTreeMap<String, u64> = [
        ("drop", 13),
        ("corrupt", 4),
        ("duplicate", 5),
        ("reorder", 6),
        ("delay", 8),
        ("link-down", 2),
        ("tx-completion-delay", 40),
        ("rx-starve", 20),
        ("reset-request", 1),
        ("dma-fault", 3),
        ("dma-foreign-iova", 7),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), FAULT_KINDS.len());
    // Nothing reported: every kind at zero.
    let none = injected_fault_counts(&serde_json::json!({}));
    assert!(none.len() == FAULT_KINDS.len() && none.values().all(|v| *v == 0));
}

#[test]
fn every_schedule_ends_with_a_transfer() {
    let strat = strategy::schedule(&base(), 6);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng_for(3));
    for _ in 0..200 {
        let s = strat.new_tree(&mut runner).unwrap().current();
        assert!((1..=6).contains(&s.ops.len()), "{s:?}");
        assert!(matches!(s.ops.last(), Some(Op::Transfer { .. })), "{s:?}");
    }
}
