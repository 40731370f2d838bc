//! Property tests: random sequences of grant / accept / return / rescind /
//! translate / client failure / owner failure across four partitions. After
//! every step: the audit passes, a refused operation changed nothing,
//! generations never go back, nothing translates that should not, H_RESCINDED
//! answers for rescinded ranges, a return with standing sub-grants and a
//! normal rescind of a shared grant are refused, forced teardown is leaves
//! first. At the end a graceful drain must leave nothing behind. The cases
//! in `owner_properties.proptest-regressions` (failures found earlier) are
//! replayed before any new case, and new failures are saved there.

mod support;

use lparhv::owner::*;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestRunner};
use std::collections::BTreeSet;
use support::owner::*;

/// The checked-in regression file beside this source file (an absolute
/// path: cargo runs the test with the package directory as its cwd).
const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/owner_properties.proptest-regressions");

/// The property's configuration: 1000 new cases after replaying the
/// regression file, and a new failure appended to it.
fn property_config() -> ProptestConfig {
    ProptestConfig {
        cases: 1000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    }
}

/// What the steps of the sequences one test ran reached: successful steps
/// per kind, states with a rescinded record, states with a sub-grant. Each
/// test counts its own, so a test can prove that its generator reaches the
/// interesting states rather than being refused.
#[derive(Default)]
struct Coverage {
    successes: [usize; 9],
    rescinded_seen: usize,
    sub_grants: usize,
}

fn kind(step: &Step) -> usize {
    match step {
        Step::Grant { .. } => 0,
        Step::Accept { .. } => 1,
        Step::Return { .. } => 2,
        Step::Rescind { .. } => 3,
        Step::Translate { .. } => 4,
        Step::ClientFailure { .. } => 5,
        Step::BeginOwnerFailure => 6,
        Step::FinishOwnerFailure => 7,
        Step::Advance { .. } => 8,
    }
}

#[derive(Clone, Debug)]
enum Step {
    Grant { granter: u32, client: u32, pick: usize, offset_pages: u64, pages: u64, write: bool },
    Accept { pick: usize, at_page: Option<u64> },
    Return { pick: usize },
    Rescind { pick: usize, forced: bool },
    Translate { part: u32, pick: usize, delta: u64, len: u64, write: bool },
    ClientFailure { part: u32 },
    BeginOwnerFailure,
    FinishOwnerFailure,
    Advance { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..6u32, 1..4u32, any::<usize>(), 0..6u64, 1..5u64, any::<bool>()).prop_map(
            |(granter, client, pick, offset_pages, pages, write)| {
                // Half of the grants come from the owner; clients are never the granter itself
                // except by the rare rotation below (a refused grant to self).
                let granter = if granter >= 4 { 0 } else { granter };
                let client = if granter == 0 { client } else { (granter + client) % 4 };
                Step::Grant { granter, client, pick, offset_pages, pages, write }
            }),
        4 => (any::<usize>(), proptest::option::weighted(0.3, 0..24u64)).prop_map(|(pick, at_page)| Step::Accept { pick, at_page }),
        3 => any::<usize>().prop_map(|pick| Step::Return { pick }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, forced)| Step::Rescind { pick, forced }),
        3 => (0..4u32, any::<usize>(), 0..(3 * PAGE), 1..(2 * PAGE), any::<bool>())
            .prop_map(|(part, pick, delta, len, write)| Step::Translate { part, pick, delta, len, write }),
        1 => (1..4u32).prop_map(|part| Step::ClientFailure { part }),
        1 => Just(Step::BeginOwnerFailure),
        2 => Just(Step::FinishOwnerFailure),
        2 => (0..3_000u64).prop_map(|ms| Step::Advance { ms }),
    ]
}

struct Run<'c> {
    f: Fixture,
    coverage: &'c mut Coverage,
    now: u64,
    /// (incarnation, logical address) that must not translate any more.
    dead: BTreeSet<(PartitionRef, u64)>,
}

impl Run<'_> {
    /// The grant picked by an index, among all grant records (sorted by id).
    fn pick(&self, pick: usize) -> Option<Grant> {
        let all: Vec<&Grant> = self.f.t.grants().collect();
        (!all.is_empty()).then(|| all[pick % all.len()].clone())
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let before = self.f.t.clone();
        let outcome: Result<(), HvError> = match step.clone() {
            Step::Grant { granter, client, pick, offset_pages, pages, write } => {
                let access = if write { Access::ReadWrite } else { Access::ReadOnly };
                let g = self.f.p(granter);
                let (mut offset_pages, mut pages) = (offset_pages, pages);
                let source = if granter == 0 && pick % 3 != 0 {
                    let (resource, resource_pages) = if pick % 2 == 0 { (R1, 16) } else { (R2, 4) };
                    if pick % 7 != 0 {
                        offset_pages %= resource_pages;
                        pages = 1 + (pages - 1) % (resource_pages - offset_pages);
                    }
                    GrantSource::Owned(resource)
                } else {
                    // A sub-grant of something the granter holds, mostly an accepted
                    // one and mostly inside it; sometimes anything (or a bogus cookie).
                    let mut held: Vec<Grant> = self.f.t.grants().filter(|x| x.client == g).cloned().collect();
                    if pick % 5 != 0 {
                        held.retain(|x| x.client_state == ClientState::Shared);
                    }
                    if held.is_empty() {
                        GrantSource::Accepted(Cookie(pick as u64 | 1))
                    } else {
                        let parent = &held[pick % held.len()];
                        let parent_pages = parent.length / PAGE;
                        if pick % 7 != 0 {
                            offset_pages %= parent_pages;
                            pages = 1 + (pages - 1) % (parent_pages - offset_pages);
                        }
                        GrantSource::Accepted(parent.cookie)
                    }
                };
                self.f.try_grant(g, source, client, offset_pages * PAGE, pages * PAGE, access).map(|_| ())
            }
            Step::Accept { pick, at_page } => match self.pick(pick) {
                None => Ok(()),
                Some(g) => {
                    let placement = match at_page {
                        Some(p) => Placement::At(self.f.t.config().window.base + p * PAGE),
                        None => Placement::Anywhere,
                    };
                    let r = self.f.t.accept(g.client, g.cookie, placement).map(|_| ());
                    if g.client_state == ClientState::Rescinded {
                        prop_assert_eq!(r.map_err(|e| e.code), Err(ReturnCode::Rescinded));
                        return Ok(());
                    }
                    r
                }
            },
            Step::Return { pick } => match self.pick(pick) {
                None => Ok(()),
                Some(g) => {
                    let r = self.f.t.return_grant(g.client, g.cookie).map(|_| ());
                    let client_live = self.f.t.current_ref(g.client.id) == Some(g.client)
                        && before.partition(g.client.id).unwrap().status == PartitionStatus::Active;
                    if g.client_state == ClientState::Shared && !g.children.is_empty() {
                        prop_assert_eq!(r.map_err(|e| e.reason), Err(Reason::SubGrantsOutstanding));
                        prop_assert_eq!(&self.f.t, &before);
                        return Ok(());
                    }
                    if client_live && g.client_state != ClientState::Unknown {
                        prop_assert!(r.is_ok(), "return of {:?} refused: {:?}", g, r);
                    }
                    r
                }
            },
            Step::Rescind { pick, forced } => match self.pick(pick) {
                None => Ok(()),
                Some(g) => {
                    let mode = if forced { RescindMode::Forced } else { RescindMode::Normal };
                    let r = self.f.t.rescind(g.granter, g.client.id, g.cookie, mode);
                    if let Ok(torn) = &r {
                        // Leaves first: every grant comes after all of its descendants,
                        // i.e. no grant's parent appears before it.
                        for (i, t) in torn.iter().enumerate() {
                            if let Some(parent) = before.grant_record(t.grant).and_then(|x| x.parent) {
                                let parent_pos = torn.iter().position(|x| x.grant == parent);
                                prop_assert!(parent_pos.is_none_or(|p| p > i), "parent torn down before child");
                            }
                        }
                    }
                    if !forced && g.client_state == ClientState::Shared && g.owner_state == OwnerState::Sharable {
                        prop_assert!(r.is_err(), "normal rescind of a shared grant succeeded");
                    }
                    r.map(|_| ())
                }
            },
            Step::Translate { part, pick, delta, len, write } => {
                let p = self.f.p(part);
                let base = self
                    .f
                    .t
                    .partition(PartitionId(part))
                    .unwrap()
                    .l2p
                    .entries()
                    .map(|(b, _)| b)
                    .nth(pick % 4)
                    .unwrap_or(self.f.t.config().window.base);
                let addr = base + delta;
                let r = self.f.t.translate(p, addr, len, write);
                if let Ok(tr) = r {
                    // Only a shared grant of this incarnation may answer.
                    let g = self.f.t.grant_record(tr.grant).unwrap();
                    prop_assert_eq!(g.client, p);
                    prop_assert_eq!(g.client_state, ClientState::Shared);
                    prop_assert!(tr.offset >= g.offset && tr.offset + len <= g.offset + g.length);
                }
                Ok(())
            }
            Step::ClientFailure { part } => {
                let p = self.f.p(part);
                self.f.t.client_failure(p).map(|_| ())
            }
            Step::BeginOwnerFailure => {
                let owner = self.f.owner();
                self.f.t.begin_owner_failure(owner, Millis(self.now)).map(|_| ())
            }
            Step::FinishOwnerFailure => self.f.t.finish_owner_failure(PartitionId(0), Millis(self.now)).map(|_| ()),
            Step::Advance { ms } => {
                self.now += ms;
                Ok(())
            }
        };
        if outcome.is_ok() {
            self.coverage.successes[kind(step)] += 1;
        }
        if self.f.t.grants().any(|g| g.client_state == ClientState::Rescinded) {
            self.coverage.rescinded_seen += 1;
        }
        if self.f.t.grants().any(|g| g.parent.is_some()) {
            self.coverage.sub_grants += 1;
        }
        self.check(&before, outcome)
    }

    fn check(&mut self, before: &OwnerTable, outcome: Result<(), HvError>) -> Result<(), TestCaseError> {
        let t = &self.f.t;
        if let Err(failure) = t.audit() {
            return Err(TestCaseError::fail(format!("audit: {failure}")));
        }
        if outcome.is_err() {
            prop_assert_eq!(t, before, "a refused operation changed the table");
        }
        prop_assert!(t.revision() >= before.revision());
        for (id, record) in before.partitions() {
            prop_assert!(t.partition(id).unwrap().generation >= record.generation, "generation went back");
        }
        // Mappings that went away (or were rescinded) must never translate again
        // unless a new accept maps the same address.
        for (id, record) in before.partitions() {
            let p = PartitionRef { id, generation: record.generation };
            for (base, entry) in record.l2p.entries() {
                let still = t
                    .partition(id)
                    .filter(|now| now.generation == record.generation)
                    .and_then(|now| now.l2p.get(base))
                    .is_some_and(|e| e.grant == entry.grant && e.state == MappingState::Mapped);
                if entry.state == MappingState::Mapped && !still {
                    self.dead.insert((p, base));
                }
            }
        }
        let mut revived = Vec::new();
        for (p, addr) in &self.dead {
            match t.translate(*p, *addr, 1, false) {
                Ok(tr) => {
                    // Only legitimate if a grant accepted after the loss covers it now.
                    let g = t.grant_record(tr.grant).unwrap();
                    prop_assert!(g.client == *p && g.client_state == ClientState::Shared);
                    prop_assert!(before.grant_record(tr.grant).is_none_or(|old| old.client_state != ClientState::Shared));
                    revived.push((*p, *addr));
                }
                Err(e) => {
                    let rescinded = t
                        .partition(p.id)
                        .filter(|now| now.generation == p.generation)
                        .and_then(|now| now.l2p.get(*addr))
                        .is_some_and(|e| e.state == MappingState::Rescinded);
                    if rescinded {
                        prop_assert_eq!(e.code, ReturnCode::Rescinded);
                    }
                }
            }
        }
        for key in revived {
            self.dead.remove(&key);
        }
        // Every live entry answers per its state.
        for (id, record) in t.partitions() {
            let p = PartitionRef { id, generation: record.generation };
            for (base, entry) in record.l2p.entries() {
                let r = t.translate(p, base, 1, false).map_err(|e| e.code);
                match entry.state {
                    MappingState::Mapped => prop_assert!(r.is_ok()),
                    MappingState::Rescinded => prop_assert_eq!(r.err(), Some(ReturnCode::Rescinded)),
                }
            }
        }
        Ok(())
    }

    /// Ends recovery, then cleans up with the ordinary protocol only: clients
    /// return (leaves first), granters rescind normally. Nothing may be left.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        self.now += 1_000_000;
        let _ = self.f.t.finish_owner_failure(PartitionId(0), Millis(self.now));
        for _ in 0..(self.f.t.grants().count() + 3) {
            let grants: Vec<Grant> = self.f.t.grants().cloned().collect();
            for g in grants {
                let Some(now) = self.f.t.grant_record(g.id).cloned() else { continue };
                let r = match now.client_state {
                    ClientState::Shared if now.children.is_empty() => self.f.t.return_grant(now.client, now.cookie).map(|_| ()),
                    ClientState::Rescinded => self.f.t.return_grant(now.client, now.cookie).map(|_| ()),
                    ClientState::Granted | ClientState::Unknown => {
                        self.f.t.rescind(now.granter, now.client.id, now.cookie, RescindMode::Normal).map(|_| ())
                    }
                    ClientState::Shared => Ok(()),
                };
                prop_assert!(r.is_ok(), "drain step on {:?} failed: {:?}", now, r);
                if let Err(failure) = self.f.t.audit() {
                    return Err(TestCaseError::fail(format!("audit during drain: {failure}")));
                }
            }
        }
        prop_assert_eq!(self.f.t.grants().count(), 0, "grants leaked");
        for (id, record) in self.f.t.partitions() {
            prop_assert!(record.l2p.is_empty(), "{} still maps something", id);
            prop_assert_eq!(record.status, PartitionStatus::Active);
        }
        prop_assert_eq!(self.f.t.resource_state(R1), Some(OwnerState::NotSharable));
        prop_assert_eq!(self.f.t.resource_state(R2), Some(OwnerState::NotSharable));
        Ok(())
    }
}

fn run_sequence(steps: &[Step], coverage: &mut Coverage) -> Result<(), TestCaseError> {
    let mut run = Run { f: Fixture::new(), coverage, now: 0, dead: BTreeSet::new() };
    for step in steps {
        run.apply(step)?;
    }
    run.drain()
}

/// The generator must reach every kind of success, rescinded records and
/// sub-grant trees; otherwise the property below would prove little.
#[test]
fn the_generator_reaches_the_interesting_states() {
    use proptest::strategy::ValueTree;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(step(), 40..80);
    let mut coverage = Coverage::default();
    for _ in 0..64 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        run_sequence(&steps, &mut coverage).unwrap();
    }
    for (i, count) in coverage.successes.iter().enumerate() {
        assert!(*count > 0, "step kind {i} never succeeded");
    }
    assert!(coverage.rescinded_seen > 0, "no forced rescind of a shared grant");
    assert!(coverage.sub_grants > 0, "no sub-grant");
}

/// The property's configuration really replays the checked-in regression
/// file: with no new cases asked for, it runs once per seed in the file,
/// and every saved case passes.
#[test]
fn the_checked_in_regressions_are_replayed() {
    let text = std::fs::read_to_string(REGRESSIONS).expect("the regression file is checked in");
    let seeds = text.lines().filter(|l| l.starts_with("cc ")).count();
    assert!(seeds > 0, "{REGRESSIONS} holds no seed");
    let strategy = prop::collection::vec(step(), 1..80);

    // The runner takes an `Fn` test: count the runs in a cell.
    let runs = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(ProptestConfig { cases: 0, ..property_config() });
    runner
        .run(&strategy, |steps| {
            runs.set(runs.get() + 1);
            run_sequence(&steps, &mut Coverage::default())
        })
        .expect("every regression case passes");
    assert_eq!(runs.get(), seeds, "the property did not run once per saved seed");
}

proptest! {
    #![proptest_config(property_config())]

    #[test]
    fn random_operation_sequences_keep_every_invariant(steps in prop::collection::vec(step(), 1..80)) {
        run_sequence(&steps, &mut Coverage::default())?;
    }
}
