//! Schedules at run time (SPEC §18): the [`Processes`] methods behind
//! `/v1/schedules`, and the [`Scheduler`] the work driver runs before each
//! drive's claims. The rules (what is valid, when a schedule fires next, what
//! a due fire does) are [`crate::schedule`]'s; this module reads, starts and
//! writes what they compute.
//!
//! A fire reads its schedule again just before it decides (a pause or a
//! delete that answered before then is never followed by its fire), starts
//! its process first and advances the schedule second (the
//! compare-and-set `ProcessRegistry::advance_schedule`). The process id is
//! fixed by the stored next fire time, so a crash between the two, or two
//! nodes firing together, start the same process once; only one advance wins.
//! Two nodes may also decide a fire differently (one sees the previous fire's
//! process running and skips, the other sees it ended and starts): the losing
//! advance still records the fire it started as the last one, so the next
//! fire's `overlap: skip` check sees that process.

use std::sync::Arc;

use futures::StreamExt;

use crate::clock::SharedClock;
use crate::model::{ProcessStatus, MAX_PAGE_SIZE};
use crate::processes::{Listed, Processes, Starter};
use crate::registry::ProcessRegistry;
use crate::schedule::{plan_fire, FireOutcome, FirePlan, FireRefusal, FireReport, Schedule, ScheduleRequest};
use crate::{CairnError, Result};

/// How many due schedules one read takes.
const DUE_PAGE: usize = 256;
/// The most pages one pass fires before it lets the drive claim (the next
/// drive goes on where this one stopped).
const MAX_PAGES_PER_PASS: usize = 16;
/// How many fires of a page are made at once.
const FIRES_AT_ONCE: usize = 16;

/// Fires due schedules: what the work driver runs before each drive's claims.
pub(crate) struct Scheduler {
    registry: Arc<dyn ProcessRegistry>,
    starter: Arc<Starter>,
    clock: SharedClock,
}

impl Scheduler {
    pub(crate) fn new(registry: Arc<dyn ProcessRegistry>, starter: Arc<Starter>, clock: SharedClock) -> Self {
        Self {
            registry,
            starter,
            clock,
        }
    }

    /// Fire every schedule due now, once each. One schedule whose fire the
    /// store fails does not hold the others back: it is named in the report
    /// (`failed`) and tried again by a later pass.
    pub(crate) async fn fire_due(&self) -> Result<FireReport> {
        let now = self.clock.now_ms();
        let mut report = FireReport::default();
        let mut failed = std::collections::HashSet::new();
        for page in 0..MAX_PAGES_PER_PASS {
            let due = self.registry.due_schedules(now, DUE_PAGE).await?;
            let n = due.len();
            let mut fired = 0;
            // Each schedule's fire is its own (its reads, its start, its
            // compare-and-set advance), so a page's fires are made a few at
            // a time: one after another, a store's round trips bound a pass
            // to a few hundred fires a second and later fire times are
            // passed over.
            let mut fires = futures::stream::iter(due.into_iter().filter(|s| !failed.contains(&s.id)))
                .map(|schedule| async move {
                    let mut made = FireReport::default();
                    let result = self.fire(&schedule, now, &mut made).await;
                    (schedule.id, made, result)
                })
                .buffered(FIRES_AT_ONCE);
            let mut failed_now = Vec::new();
            while let Some((id, made, result)) = fires.next().await {
                match result {
                    Ok(()) => {
                        fired += 1;
                        report.merge(made);
                    }
                    Err(e) => {
                        tracing::warn!(schedule = %id, error = %e, "a schedule's fire failed; a later pass tries it again");
                        report.failed.push(id.clone());
                        failed_now.push(id);
                    }
                }
            }
            drop(fires);
            failed.extend(failed_now);
            // A page of nothing but failed schedules would be read again.
            if n < DUE_PAGE || fired == 0 {
                break;
            }
            report.more = page + 1 == MAX_PAGES_PER_PASS;
        }
        Ok(report)
    }

    async fn previous_running(&self, schedule: &Schedule) -> Result<bool> {
        let Some(pid) = &schedule.last_process_id else {
            return Ok(false);
        };
        match self.registry.get(pid).await {
            Ok(rec) => Ok(rec.status == ProcessStatus::Running),
            Err(CairnError::UnknownProcess(_) | CairnError::NoLongerRetained(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn fire(&self, listed: &Schedule, now: u64, report: &mut FireReport) -> Result<()> {
        // The schedule as it stands now, not as the page read it: a pause,
        // a delete (and a schedule made again under the id) or another
        // node's fire since then is seen, and this fire is not made.
        let Some(schedule) = self.registry.get_schedule(&listed.id).await? else {
            return Ok(());
        };
        if schedule.created_ms != listed.created_ms || schedule.next_fire_ms != listed.next_fire_ms {
            return Ok(());
        }
        let schedule = &schedule;
        let running = self.previous_running(schedule).await?;
        let plan = plan_fire(schedule, now, running)?;
        // Counted by the node whose advance took: every node that raced
        // this fire passed over the same fire times.
        let passed_over = match &plan {
            FirePlan::Skip { fire_ms, advance } | FirePlan::Start { fire_ms, advance, .. } => {
                schedule.passed_over(*fire_ms, advance.next_fire_ms)?
            }
            FirePlan::NotDue => 0,
        };
        match plan {
            FirePlan::NotDue => {}
            FirePlan::Skip { fire_ms, advance } => {
                if self
                    .registry
                    .advance_schedule(&schedule.id, schedule.next_fire_ms, &advance)
                    .await?
                {
                    let fire_id = schedule.fire_id(fire_ms);
                    let previous = schedule.last_process_id.as_deref().unwrap_or_default();
                    // Said once per running process (at its first skipped
                    // fire, the one next after the fire that started it),
                    // then at debug: a day-long run under an every-second
                    // schedule would write a line a second. Every skip is
                    // counted, and a caught-up one is in the pass's WARN.
                    let first = schedule
                        .last_fire_ms
                        .and_then(|at| schedule.next_after(at).ok().flatten())
                        == Some(fire_ms);
                    if first {
                        tracing::info!(schedule = %schedule.id, fire = %fire_id, previous = %previous,
                            "a schedule's fire skipped (overlap `skip`): its previous fire's process is still running; \
                             further fires skipped while it runs are logged at debug");
                    } else {
                        tracing::debug!(schedule = %schedule.id, fire = %fire_id, previous = %previous,
                            "a schedule's fire skipped (overlap `skip`): its previous fire's process is still running");
                    }
                    crate::schedule::count_fire(FireOutcome::Skipped);
                    report.skipped.push(fire_id);
                    report.add_passed_over(&schedule.id, passed_over, FireOutcome::Skipped);
                }
            }
            FirePlan::Start {
                fire_ms,
                process_id,
                advance,
            } => {
                let mut advance = advance;
                let request = schedule.start.start_request(process_id.clone());
                // A fire under a parent cancelled for good would be born
                // cancelled: it is refused instead.
                let started = match cancelled_parent(self.registry.as_ref(), schedule.start.caused_by.as_ref()).await? {
                    Some(refusal) => Err(refusal),
                    None => self.starter.start(request.clone()).await.map(|_| ()),
                };
                let started = match started {
                    // This fire may have started its process before a crash
                    // kept it from advancing the schedule, and the start's
                    // checks may refuse it now (a tool since removed or
                    // redeclared, a parent since cancelled): the process this
                    // fire made is its answer.
                    Err(e) if e.is_client_error() => match self.registry.get(&process_id).await {
                        Ok(existing) if made_by(&existing, &request, self.starter.declared_types(&request)) => Ok(()),
                        // Not known now: this pass fails and a later one
                        // fires again, rather than a refusal recorded
                        // beside a process that may run.
                        Err(read) if !read.is_client_error() => return Err(read),
                        _ => Err(e),
                    },
                    other => other,
                };
                let outcome = match started {
                    Ok(()) => {
                        report.started.push(process_id);
                        FireOutcome::Started
                    }
                    // A fire that can never start (its tool is gone from this
                    // server, its id taken by another start) must not hold the
                    // schedule: it is skipped, and said so.
                    // The refusal is recorded on the schedule, where its
                    // reader sees it, until a later fire starts a process.
                    Err(e) if e.is_client_error() => {
                        tracing::warn!(schedule = %schedule.id, process_id = %process_id, error = %e, "a schedule's fire could not start; skipped");
                        advance.fired = None;
                        advance.refused = Some(FireRefusal {
                            fire_ms,
                            process_id: process_id.clone(),
                            code: e.code().to_string(),
                            message: e.to_string(),
                        });
                        report.refused.push(process_id);
                        FireOutcome::Refused
                    }
                    Err(e) => return Err(e),
                };
                if self
                    .registry
                    .advance_schedule(&schedule.id, schedule.next_fire_ms, &advance)
                    .await?
                {
                    crate::schedule::count_fire(outcome);
                    report.add_passed_over(&schedule.id, passed_over, outcome);
                }
            }
        }
        Ok(())
    }
}

/// Why a schedule's fire (or template) cannot start under the process its
/// `caused_by` names, if it cannot: that parent has ended with its
/// cancellation requested, so a child started under it is born cancelled
/// (the start path's rule, which a plain start keeps), and a schedule would
/// make one at every fire for good. `None` when there is no parent, or one
/// a start under which is taken as any other: running, ended without a
/// cancellation, pruned (its tombstone stands), or missing (the start's to
/// answer).
async fn cancelled_parent(
    registry: &dyn ProcessRegistry,
    caused_by: Option<&crate::model::CausalRef>,
) -> Result<Option<CairnError>> {
    let Some(parent) = caused_by.and_then(crate::model::CausalRef::parent_process) else {
        return Ok(None);
    };
    let record = match registry.get(parent).await {
        Ok(record) if record.is_terminal() && record.cancel_request.is_some() => record,
        Ok(_) | Err(CairnError::UnknownProcess(_) | CairnError::NoLongerRetained(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(CairnError::InvalidRequest(format!(
        "`caused_by` names process `{parent}`, which has ended ({}) with its cancellation requested: \
         every child started under it is born cancelled",
        record.status.label()
    ))))
}

/// Whether `existing` is the process `request` starts (by an earlier try of
/// the same fire), not another start that took the fire's id: the same
/// registration, field by field (the start's checks, which may refuse the
/// fire now, are not run again): input, disposition, originator and cause,
/// wake target, external ref, env, the template's own event types, and no
/// type beyond those `declared` (the template's and its tool's) and the core
/// ones (unless the tool is not run here).
pub(crate) fn made_by(
    existing: &crate::model::ProcessRecord,
    request: &crate::processes::StartRequest,
    declared: Option<Vec<crate::events::EventType>>,
) -> bool {
    let env = match (&request.env_spec, &existing.env_ref) {
        (None, None) => true,
        (Some(spec), Some(stored)) => crate::validate::env_ref_and_bytes(spec).is_ok_and(|(r, _)| r == *stored),
        _ => false,
    };
    // The template's own types, as it declares them; and no type beside
    // the core ones, the template's and its tool's (by name: a tool
    // redeclared since the fire's start may declare them otherwise now).
    let own = request
        .event_types
        .iter()
        .all(|t| existing.event_types.find(&t.name) == Some(t));
    let no_other = declared.is_none_or(|all| {
        let core = crate::events::core_event_types();
        existing
            .event_types
            .to_vec()
            .iter()
            .all(|t| core.iter().chain(&all).any(|known| known.name == t.name))
    });
    let types = own && no_other;
    existing.input == request.input
        && existing.disposition == request.disposition
        && existing.provenance.originator == request.originator
        && existing.provenance.caused_by == request.caused_by
        && existing.wake_target == request.wake_target
        && existing.external_ref == request.external_ref
        && env
        && types
}

#[async_trait::async_trait]
impl crate::worker::DueWork for Scheduler {
    async fn run_due(&self) -> crate::worker::DueLeft {
        let fired = self.fire_due().await;
        if let Ok(report) = &fired {
            if report.passed_over > 0 {
                // A schedule's count stops at `MAX_COUNTED_PASSED_OVER`:
                // then the total is a lower bound, and says so.
                tracing::warn!(
                    passed_over = report.passed_over,
                    passed_over_at_least = report.passed_over_at_least,
                    catch_up_skipped = report.catch_up_skipped_by.len(),
                    catch_up_refused = report.catch_up_refused_by.len(),
                    "{}",
                    report.passed_over_message()
                );
            }
        }
        match fired {
            Ok(report) if !report.failed.is_empty() => crate::worker::DueLeft::Failed,
            Ok(report) if report.more => crate::worker::DueLeft::More,
            Ok(_) => crate::worker::DueLeft::Nothing,
            Err(e) => {
                tracing::warn!(error = %e, "firing due schedules failed");
                crate::worker::DueLeft::Failed
            }
        }
    }
}

/// The schedule methods of the host API (SPEC §18).
impl Processes {
    fn scheduler(&self) -> Scheduler {
        Scheduler::new(
            self.inner.registry.clone(),
            self.inner.starter.clone(),
            self.inner.clock.clone(),
        )
    }

    /// Store a schedule. Everything is checked first (the timing, the
    /// timezone, and the template against the start path: its tool, args,
    /// disposition, ids) and bad input changes nothing. A repeated create with
    /// the same definition answers the stored schedule and `false`; another
    /// definition under the same id is `schedule_conflict`.
    pub async fn create_schedule(&self, request: ScheduleRequest) -> Result<(Schedule, bool)> {
        let now = self.inner.clock.now_ms();
        let spec = match request.validate() {
            Ok(spec) => spec,
            // A schedule stored before a cron check was added (`1,,2`),
            // created again as it was, is the same create.
            // (Not one whose id is refused: no schedule is stored under it,
            // and a store may not even be asked for it, as PostgreSQL takes
            // no NUL in text.)
            Err(e) => {
                let Some(made) = request
                    .as_stored_before_checks(now)
                    .filter(|_| !matches!(e, CairnError::InvalidId(_)))
                else {
                    return Err(e);
                };
                return match self.inner.registry.get_schedule(&request.id).await? {
                    Some(existing) if existing.same_definition(&made) => Ok((existing, false)),
                    _ => Err(e),
                };
            }
        };
        let probe = request.start.start_request(format!("{}@{now}", request.id));
        let checked = match self.inner.starter.check(probe, now).await {
            Ok(()) => match cancelled_parent(self.inner.registry.as_ref(), request.start.caused_by.as_ref()).await? {
                Some(refusal) => Err(refusal),
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            // A schedule stored while its template could start (its tool
            // since gone from this server, its parent since cancelled),
            // created again as it is, is the same create: a host that
            // re-asserts its schedules at boot goes on, and the fires say
            // what they cannot start.
            if e.is_client_error() {
                let made = Schedule::new(request.clone(), &spec, now)?;
                if let Some(existing) = self.inner.registry.get_schedule(&request.id).await? {
                    if existing.same_definition(&made) {
                        return Ok((existing, false));
                    }
                }
            }
            return Err(e);
        }
        let schedule = Schedule::new(request, &spec, now)?;
        match self.inner.registry.insert_schedule(&schedule).await? {
            None => {
                self.nudge();
                Ok((schedule, true))
            }
            Some(existing) if existing.same_definition(&schedule) => Ok((existing, false)),
            Some(existing) => Err(CairnError::ScheduleConflict {
                differs: existing.differences(&schedule),
                id: schedule.id,
            }),
        }
    }

    /// The schedule `id` (`unknown_schedule` when there is none).
    pub async fn get_schedule(&self, id: &str) -> Result<Schedule> {
        crate::validate::validate_id("schedule id", id)?;
        self.inner
            .registry
            .get_schedule(id)
            .await?
            .ok_or_else(|| CairnError::UnknownSchedule(id.to_string()))
    }

    /// One page of schedules in id order, after `after_id`: at most `limit`,
    /// and none after the one that brings the page to
    /// [`crate::LIST_PAGE_BYTES`] as JSON (a template may hold a mebibyte of
    /// input). `next_after_id` is set when the page is full or was cut there.
    pub async fn list_schedules(&self, after_id: Option<&str>, limit: Option<usize>) -> Result<Listed<Schedule>> {
        let limit = crate::model::page_limit(limit)?.min(MAX_PAGE_SIZE);
        if let Some(after) = after_id {
            crate::validate::validate_id("schedule cursor", after)?;
        }
        let registry = &self.inner.registry;
        let (items, more, _) = crate::processes::read_in_chunks(
            limit,
            after_id.map(str::to_string),
            |s: &Schedule| Some(s.id.clone()),
            |after: Option<String>, want| async move { registry.list_schedules(after.as_deref(), want).await },
        )
        .await?;
        Ok(Listed {
            next_after_id: more.then(|| items.last().map(|s| s.id.clone())).flatten(),
            items,
        })
    }

    /// Remove a schedule (`unknown_schedule` when there is none). Processes it
    /// started are untouched.
    pub async fn delete_schedule(&self, id: &str) -> Result<()> {
        crate::validate::validate_id("schedule id", id)?;
        if self.inner.registry.delete_schedule(id).await? {
            Ok(())
        } else {
            Err(CairnError::UnknownSchedule(id.to_string()))
        }
    }

    /// Stop a schedule firing until it is resumed.
    pub async fn pause_schedule(&self, id: &str) -> Result<Schedule> {
        crate::validate::validate_id("schedule id", id)?;
        self.inner
            .registry
            .set_schedule_paused(id, true, None)
            .await?
            .ok_or_else(|| CairnError::UnknownSchedule(id.to_string()))
    }

    /// Let a paused schedule fire again, from its first fire time after now
    /// (fires missed while paused are not caught up). Resuming a running
    /// schedule changes nothing.
    pub async fn resume_schedule(&self, id: &str) -> Result<Schedule> {
        let current = self.get_schedule(id).await?;
        if !current.paused {
            return Ok(current);
        }
        let now = self.inner.clock.now_ms();
        let next = current
            .next_after(now)?
            .ok_or_else(|| CairnError::InvalidRequest(format!("schedule `{id}` never fires again; it stays paused")))?;
        let resumed = self
            .inner
            .registry
            .set_schedule_paused(id, false, Some(next))
            .await?
            .ok_or_else(|| CairnError::UnknownSchedule(id.to_string()))?;
        self.nudge();
        Ok(resumed)
    }

    /// Fire every schedule due now, once each (the work driver does this
    /// before each drive; a host without a worker, or a test on a manual
    /// clock, may call it itself).
    pub async fn fire_schedules(&self) -> Result<FireReport> {
        let report = self.scheduler().fire_due().await?;
        if !report.started.is_empty() {
            self.nudge();
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::model::{CausalRef, Disposition, Originator, ProcessInput, ProcessStatus};
    use crate::schedule::{fire_counts, Overlap, ScheduleRequest, StartTemplate};
    use crate::{CairnError, Clock, ManualClock, Processes, StartRequest};

    fn runtime(clock: &ManualClock) -> Processes {
        Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
            .clock(Arc::new(clock.clone()))
            .without_worker()
            .start()
    }

    /// External work: it runs until its owner ends it.
    fn external() -> (ProcessInput, Disposition) {
        let input = ProcessInput::External {
            metadata: serde_json::json!({}),
        };
        (input, Disposition::ExternallyOwned)
    }

    /// A tool call no worker of this runtime runs: it waits to be claimed,
    /// and a cancellation ends it at once.
    fn tool_call() -> (ProcessInput, Disposition) {
        let input = ProcessInput::ToolCall {
            tool: "echo".into(),
            args: serde_json::json!({"value": 1}),
        };
        (input, Disposition::Rerunnable)
    }

    /// An `every 10s` schedule whose fires start `work`, under `parent` when
    /// one is named.
    fn every_10s(
        id: &str,
        overlap: Overlap,
        (input, disposition): (ProcessInput, Disposition),
        parent: Option<&str>,
    ) -> ScheduleRequest {
        ScheduleRequest {
            id: id.into(),
            cron: None,
            every: Some("10s".into()),
            timezone: None,
            start: StartTemplate {
                input,
                disposition,
                originator: Originator::host(),
                caused_by: parent.map(CausalRef::process),
                grant: None,
                wake_target: None,
                event_types: Vec::new(),
                env_spec: None,
                external_ref: None,
            },
            overlap,
        }
    }

    /// After downtime, a `skip` schedule whose last fire's process still
    /// runs skips its caught-up fire: the pass's account says so (and
    /// counts it) rather than that a missed fire was caught up.
    #[tokio::test]
    async fn a_caught_up_fire_skipped_for_overlap_is_said_so() {
        let clock = ManualClock::new(1_000_000);
        let p = runtime(&clock);
        let t0 = clock.now_ms();
        p.create_schedule(every_10s("cu", Overlap::Skip, external(), None))
            .await
            .expect("created");
        clock.advance(10_000);
        let report = p.fire_schedules().await.expect("fired");
        assert_eq!(report.started, [format!("cu@{}", t0 + 10_000)]);

        let before = fire_counts();
        clock.advance(60_000);
        let report = p.fire_schedules().await.expect("fired");
        assert!(report.started.is_empty(), "{report:?}");
        assert_eq!(report.skipped, [format!("cu@{}", t0 + 20_000)]);
        assert_eq!(report.passed_over, 5, "{report:?}");
        assert_eq!(report.catch_up_skipped_by, ["cu"]);
        let said = report.passed_over_message();
        assert!(
            said.starts_with("5 fire times of schedule(s) cu passed over")
                && said.contains("the missed fire of cu was skipped, not caught up")
                && !said.contains("is caught up"),
            "{said}"
        );
        let after = fire_counts();
        assert!(after.skipped > before.skipped, "{before:?} -> {after:?}");
        p.shutdown().await;
    }

    /// A template under a parent that ended with its cancellation requested
    /// is refused at creation (`invalid_request` naming the parent), though
    /// a plain start under it is taken, born cancelled; a fire whose parent
    /// ended so after the schedule was made is recorded as its
    /// `last_refusal`, starting nothing; the same create again answers the
    /// stored schedule. A parent that ended otherwise is a parent as before.
    #[tokio::test]
    async fn a_fire_under_a_cancelled_parent_is_refused_not_born_cancelled() {
        let clock = ManualClock::new(1_000_000);
        let p = runtime(&clock);
        let t0 = clock.now_ms();
        let (input, disposition) = external();
        let parent = StartRequest::new("parent", input, disposition);
        p.start(parent).await.expect("parent started");
        let request = every_10s("kid", Overlap::Allow, tool_call(), Some("parent"));
        p.create_schedule(request.clone())
            .await
            .expect("created under a running parent");
        // Its cancellation asked, then its owner's end: a child started
        // under it now is born cancelled.
        p.cancel("parent", None).await.expect("cancel asked");
        let ended = p
            .complete_external("parent", crate::model::Outcome::cancelled("stopped"), "owner")
            .await
            .expect("ended");
        assert_eq!(ended.status, ProcessStatus::Cancelled);

        clock.advance(10_000);
        let report = p.fire_schedules().await.expect("fired");
        let fire = format!("kid@{}", t0 + 10_000);
        assert!(report.started.is_empty(), "{report:?}");
        assert_eq!(report.refused, std::slice::from_ref(&fire));
        assert!(
            matches!(p.get(&fire).await, Err(CairnError::UnknownProcess(_))),
            "no process was born cancelled"
        );
        let s = p.get_schedule("kid").await.expect("stored");
        let refusal = s.last_refusal.expect("the refusal recorded");
        assert_eq!(
            (refusal.process_id.as_str(), refusal.code.as_str()),
            (fire.as_str(), "invalid_request")
        );
        assert!(
            refusal.message.contains("`parent`, which has ended (cancelled)"),
            "{}",
            refusal.message
        );
        assert_eq!(s.next_fire_ms, t0 + 20_000, "the schedule goes on");
        let (_, created) = p.create_schedule(request).await.expect("the same create again");
        assert!(!created);

        let e = p
            .create_schedule(every_10s("kid2", Overlap::Allow, tool_call(), Some("parent")))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), "invalid_request");
        assert!(e.to_string().contains("`parent`, which has ended (cancelled)"), "{e}");
        assert!(matches!(
            p.get_schedule("kid2").await,
            Err(CairnError::UnknownSchedule(_))
        ));

        // A plain start under the ended parent is as it was: born cancelled.
        let (input, disposition) = tool_call();
        let mut child = StartRequest::new("child", input, disposition);
        child.caused_by = Some(CausalRef::process("parent"));
        let made = p.start(child).await.expect("a plain start is taken");
        assert_eq!(made.process.status, ProcessStatus::Cancelled);

        let (input, disposition) = external();
        p.start(StartRequest::new("done", input, disposition))
            .await
            .expect("started");
        p.complete_external("done", crate::model::Outcome::success(serde_json::json!(1)), "owner")
            .await
            .expect("ended");
        let (_, created) = p
            .create_schedule(every_10s("after", Overlap::Allow, tool_call(), Some("done")))
            .await
            .expect("a parent that completed is taken");
        assert!(created);
        p.shutdown().await;
    }
}
