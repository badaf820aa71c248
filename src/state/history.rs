//! History: per component, a bounded ring of attempt samples (spawn → ready for services,
//! spawn → completed for tasks, or a failure) tied to a hash of the component's command, and
//! the statistics the planner weighs components by.
//!
//! Percentiles use the nearest-rank method over successful samples: p-th percentile = the
//! sample at rank ⌈p/100 · n⌉ of the sorted durations, so it is always an observed duration
//! and needs no interpolation.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Command, Component, Kind};
use crate::plan::WeightSource;

use super::HISTORY_LIMIT;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A service's probe passed.
    Ready,
    /// A task exited 0.
    Completed,
    /// The attempt failed (exited early, non-zero, or never became ready).
    Failed,
}

/// One attempt of one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// When the attempt ended (RFC 3339).
    pub at: String,
    pub run_id: Option<String>,
    pub attempt: u32,
    /// Spawn → ready / completed, or spawn → failure.
    pub duration_ms: u64,
    pub outcome: Outcome,
}

/// The samples of one component under one command, whole: how the `history` tree held them
/// before [`Head`] (still read, and converted at the component's next sample), and how
/// tests look at what is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ring {
    pub command_hash: String,
    pub samples: VecDeque<Sample>,
}

#[cfg(test)]
impl Ring {
    pub fn new(command_hash: String) -> Self {
        Ring {
            command_hash,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample, dropping the oldest beyond [`HISTORY_LIMIT`].
    pub fn push(&mut self, sample: Sample) {
        self.samples.push_back(sample);
        while self.samples.len() > HISTORY_LIMIT {
            self.samples.pop_front();
        }
    }

    pub fn stats(&self) -> Option<HistoryStats> {
        Head::from_ring(self)?.stats()
    }
}

/// What the `history` tree holds for one component: the command its samples were measured
/// with, the sequence numbers of the samples kept (`first..next`), where each sample is
/// stored, and, per sample, what the statistics need. A new sample then costs about a
/// kilobyte written (the head) and the sample, not the whole ring (up to 100 samples, ~12 KiB)
/// parsed and rewritten every boot.
///
/// Samples are stored on their own in `history_log` under a number the database gives in
/// commit order ([`log_key`]), so the samples of one boot, all components together, land on
/// adjacent keys: sled touches a few leaves per boot instead of one per component (on 2,000
/// components with full rings, ~47 → ~17 ms of sled work per boot). `logged` lists those
/// numbers for the newest samples of the window. Samples written before `history_log`
/// existed stay in `history_samples` under [`sample_key`]: the oldest
/// `window.len() - logged.len()` samples, numbered from `first`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Head {
    pub command_hash: String,
    /// Sequence number of the oldest sample kept.
    pub first: u64,
    /// Sequence number the next sample gets (never reused, even after a command change).
    pub next: u64,
    /// Oldest first, one per sample kept: its duration, `null` for a failed attempt.
    pub window: VecDeque<Option<u64>>,
    /// The `history_log` numbers of the newest `logged.len()` samples kept, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub logged: VecDeque<u64>,
    pub last_seen: String,
    pub last_outcome: Outcome,
}

impl Head {
    /// The head of a ring in the earlier whole-ring format, its samples numbered from 0 in
    /// order; `None` for an empty ring.
    pub fn from_ring(ring: &Ring) -> Option<Head> {
        let last = ring.samples.back()?;
        Some(Head {
            command_hash: ring.command_hash.clone(),
            first: 0,
            next: ring.samples.len() as u64,
            window: ring.samples.iter().map(window_entry).collect(),
            logged: VecDeque::new(),
            last_seen: last.at.clone(),
            last_outcome: last.outcome,
        })
    }

    /// Records sample `seq`, stored as `history_log` number `logged`, measured with
    /// `command_hash` on top of `head` (if any): the ring starts afresh when the command
    /// changed, and keeps the last [`HISTORY_LIMIT`]. Returns the new head and where the
    /// samples it no longer keeps are stored.
    ///
    /// `seq` is normally `next`. A larger one (samples lost with a damaged journal) is taken
    /// as it is: the window stays right, and the gap only means a few samples stored under
    /// `history_samples` outlive the window until the next command change.
    pub fn record(
        head: Option<Head>,
        command_hash: &str,
        seq: u64,
        logged: u64,
        sample: &Sample,
    ) -> (Head, Vec<Dropped>) {
        let mut dropped = Vec::new();
        let mut head = match head {
            Some(head) if head.command_hash == command_hash => head,
            old => {
                if let Some(old) = old {
                    dropped.extend((old.first..old.unlogged_end()).map(Dropped::Sample));
                    dropped.extend(old.logged.into_iter().map(Dropped::Logged));
                }
                Head {
                    command_hash: command_hash.to_owned(),
                    first: seq,
                    next: seq,
                    window: VecDeque::new(),
                    logged: VecDeque::new(),
                    last_seen: String::new(),
                    last_outcome: sample.outcome,
                }
            }
        };
        head.window.push_back(window_entry(sample));
        head.logged.push_back(logged);
        head.next = head.next.max(seq) + 1;
        head.last_seen.clone_from(&sample.at);
        head.last_outcome = sample.outcome;
        while head.window.len() > HISTORY_LIMIT {
            // The oldest sample is in `history_log` once every sample kept is.
            let oldest_logged = if head.window.len() == head.logged.len() {
                head.logged.pop_front()
            } else {
                None
            };
            head.window.pop_front();
            dropped.push(oldest_logged.map_or(Dropped::Sample(head.first), Dropped::Logged));
            head.first += 1;
        }
        (head, dropped)
    }

    /// The end of the sequence numbers kept under `history_samples` (`first..` this).
    pub fn unlogged_end(&self) -> u64 {
        self.next.saturating_sub(self.logged.len() as u64)
    }

    pub fn stats(&self) -> Option<HistoryStats> {
        stats_of(
            &self.command_hash,
            self.window.iter().copied(),
            &self.last_seen,
            self.last_outcome,
        )
    }
}

/// Where a sample a ring no longer keeps is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Under `history_samples`, [`sample_key`] with this sequence number.
    Sample(u64),
    /// Under `history_log`, [`log_key`] of this number.
    Logged(u64),
}

/// What a ring's statistics need of one sample: its duration, `None` when the attempt failed.
fn window_entry(sample: &Sample) -> Option<u64> {
    duration_unless_failed(sample.duration_ms, sample.outcome)
}

fn duration_unless_failed(duration_ms: u64, outcome: Outcome) -> Option<u64> {
    (outcome != Outcome::Failed).then_some(duration_ms)
}

/// The `history_samples` key of sample `seq` of component `name`: the name, a zero byte (no
/// name holds one, so no name's keys fall among another's) and `seq` big-endian, so a
/// component's samples are adjacent and in order.
pub(crate) fn sample_key(name: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The `history_log` key of sample number `number` (numbers are given in commit order, so a
/// boot's samples are adjacent).
pub(crate) fn log_key(number: u64) -> [u8; 8] {
    number.to_be_bytes()
}

/// A sample as `history_log` holds it: which component and ring sequence number it belongs
/// to (the keys alone do not say), and the sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoggedSample {
    pub component: String,
    pub seq: u64,
    pub sample: Sample,
}

/// A `history` record as stored: a [`Head`], or a ring in the earlier whole-ring format.
pub(crate) enum Stored {
    Head(Head),
    Ring(Ring),
}

impl Stored {
    pub fn parse(bytes: &[u8]) -> Result<Stored, serde_json::Error> {
        serde_json::from_slice(bytes)
            .map(Stored::Head)
            .or_else(|head_err| {
                serde_json::from_slice(bytes)
                    .map(Stored::Ring)
                    .map_err(|_| head_err)
            })
    }

    /// Statistics without building a ring's samples (see [`RingDigest`]).
    pub fn stats_of(bytes: &[u8]) -> Result<Option<HistoryStats>, serde_json::Error> {
        match serde_json::from_slice::<Head>(bytes) {
            Ok(head) => Ok(head.stats()),
            Err(head_err) => serde_json::from_slice::<RingDigest<'_>>(bytes)
                .map(|digest| digest.stats())
                .map_err(|_| head_err),
        }
    }
}

/// A stored ring read for its statistics only (opening the store needs no more): sample
/// times are borrowed from the stored bytes and the other fields skipped, not built.
#[derive(Deserialize)]
pub(crate) struct RingDigest<'a> {
    #[serde(borrow)]
    command_hash: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    samples: Vec<SampleDigest<'a>>,
}

#[derive(Deserialize)]
struct SampleDigest<'a> {
    #[serde(borrow)]
    at: std::borrow::Cow<'a, str>,
    duration_ms: u64,
    outcome: Outcome,
}

impl RingDigest<'_> {
    /// The same statistics as the [`Head`] of the ring these bytes hold would give.
    pub fn stats(&self) -> Option<HistoryStats> {
        let last = self.samples.last()?;
        stats_of(
            &self.command_hash,
            self.samples
                .iter()
                .map(|s| duration_unless_failed(s.duration_ms, s.outcome)),
            &last.at,
            last.outcome,
        )
    }
}

/// Statistics of a ring from its samples' window entries (see [`window_entry`]), oldest
/// first; `None` for an empty ring.
fn stats_of(
    command_hash: &str,
    window: impl Iterator<Item = Option<u64>>,
    last_seen: &str,
    last_outcome: Outcome,
) -> Option<HistoryStats> {
    let mut count = 0usize;
    let mut durations: Vec<u64> = Vec::new();
    for entry in window {
        count += 1;
        durations.extend(entry);
    }
    if count == 0 {
        return None;
    }
    durations.sort_unstable();
    let failures = count - durations.len();
    Some(HistoryStats {
        command_hash: command_hash.to_owned(),
        samples: count,
        failures,
        failure_rate: failures as f64 / count as f64,
        p50_ms: percentile(&durations, 50),
        p90_ms: percentile(&durations, 90),
        min_ms: durations.first().copied(),
        max_ms: durations.last().copied(),
        last_seen: last_seen.to_owned(),
        last_outcome,
    })
}

/// What the journal holds for one history sample: the attempt and the command it was measured
/// with (the ring's head, and the sample under its `history_log` number, reach sled at the
/// next checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SampleEntry {
    pub command_hash: String,
    /// The sample's sequence number, given at commit. Replaying a journal over a checkpoint
    /// that already reached sled skips the samples numbered below the head's `next`.
    /// Journals from before sequence numbers have none: their samples are compared with
    /// the ones kept instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The sample's `history_log` number, given at commit with `seq` (a replay stores the
    /// sample under the same key). Journals from before `history_log` have none: the replay
    /// gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logged: Option<u64>,
    pub sample: Sample,
}

/// What history says about one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryStats {
    /// The command these samples were measured with.
    pub command_hash: String,
    /// Attempts recorded (at most [`HISTORY_LIMIT`]).
    pub samples: usize,
    pub failures: usize,
    /// failures / samples.
    pub failure_rate: f64,
    /// Over successful attempts; `None` when every attempt failed.
    pub p50_ms: Option<u64>,
    pub p90_ms: Option<u64>,
    pub min_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub last_seen: String,
    pub last_outcome: Outcome,
}

impl HistoryStats {
    /// True when these samples were measured with `command` (of `kind`).
    pub fn matches(&self, kind: Kind, command: &Command) -> bool {
        self.command_hash == command_hash(kind, command)
    }
}

/// Nearest-rank percentile of sorted values: the value at rank ⌈p/100 · n⌉ (1-based).
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (u64::from(p) * n).div_ceil(100).clamp(1, n);
    Some(sorted[(rank - 1) as usize])
}

/// Identity of what a component runs: SHA-256 over its kind and argv (first 16 hex digits).
/// Changing either starts its history afresh.
pub fn command_hash(kind: Kind, command: &Command) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{kind:?}").as_bytes());
    for arg in command.argv() {
        hasher.update([0u8]);
        hasher.update(arg.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Planner weights (`plan::Options.history`) from history: p50 (p90 when `pessimistic`) of
/// each component whose recorded command is still its command. Components with a changed
/// command, no successful sample or no command at all get none (the planner falls back to
/// `estimate:` or its default).
pub fn weights(
    stats: &BTreeMap<String, HistoryStats>,
    components: &[Component],
    pessimistic: bool,
) -> BTreeMap<String, (Duration, WeightSource)> {
    components
        .iter()
        .filter_map(|component| {
            let command = component.command.as_ref()?;
            let stats = stats.get(&component.name)?;
            if !stats.matches(component.kind, command) {
                return None;
            }
            let (ms, source) = if pessimistic {
                (stats.p90_ms?, WeightSource::HistoryP90)
            } else {
                (stats.p50_ms?, WeightSource::HistoryP50)
            };
            Some((component.name.clone(), (Duration::from_millis(ms), source)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, outcome: Outcome) -> Sample {
        Sample {
            at: format!("2025-01-01T00:00:{:02}.000Z", ms % 60),
            run_id: None,
            attempt: 1,
            duration_ms: ms,
            outcome,
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 50), Some(7));
        assert_eq!(percentile(&[7], 90), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 90), Some(4));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50), Some(50));
        assert_eq!(percentile(&hundred, 90), Some(90));
        let ten: Vec<u64> = (1..=10).map(|x| x * 10).collect();
        assert_eq!(percentile(&ten, 50), Some(50));
        assert_eq!(percentile(&ten, 90), Some(90));
        assert_eq!(percentile(&ten, 91), Some(100));
    }

    #[test]
    fn the_ring_keeps_the_last_hundred_samples() {
        let mut ring = Ring::new("h".into());
        for ms in 1..=250 {
            ring.push(sample(ms, Outcome::Ready));
        }
        assert_eq!(ring.samples.len(), HISTORY_LIMIT);
        assert_eq!(ring.samples.front().map(|s| s.duration_ms), Some(151));
        let stats = ring.stats().expect("samples exist");
        assert_eq!(stats.samples, 100);
        assert_eq!(stats.p50_ms, Some(200));
        assert_eq!(stats.p90_ms, Some(240));
        assert_eq!((stats.min_ms, stats.max_ms), (Some(151), Some(250)));
    }

    #[test]
    fn failures_count_in_the_rate_but_not_in_the_percentiles() {
        let mut ring = Ring::new("h".into());
        ring.push(sample(100, Outcome::Completed));
        ring.push(sample(5, Outcome::Failed));
        ring.push(sample(300, Outcome::Completed));
        ring.push(sample(7, Outcome::Failed));
        let stats = ring.stats().expect("samples exist");
        assert_eq!(stats.failures, 2);
        assert!((stats.failure_rate - 0.5).abs() < f64::EPSILON);
        assert_eq!(stats.p50_ms, Some(100));
        assert_eq!(stats.p90_ms, Some(300));
        assert_eq!(stats.last_outcome, Outcome::Failed);

        let mut failing = Ring::new("h".into());
        failing.push(sample(1, Outcome::Failed));
        let stats = failing.stats().expect("samples exist");
        assert_eq!((stats.p50_ms, stats.failure_rate), (None, 1.0));
    }

    #[test]
    fn a_stored_ring_read_for_its_statistics_gives_the_same_statistics() {
        let mut ring = Ring::new("h".into());
        assert!(
            serde_json::from_slice::<RingDigest<'_>>(&serde_json::to_vec(&ring).expect("json"))
                .expect("digest")
                .stats()
                .is_none()
        );
        for ms in [30, 5, 70, 12, 9] {
            let outcome = if ms == 5 {
                Outcome::Failed
            } else {
                Outcome::Ready
            };
            ring.push(sample(ms, outcome));
        }
        ring.samples[2].at = "2025-\"quoted\"".into();
        let bytes = serde_json::to_vec(&ring).expect("json");
        let digest: RingDigest<'_> = serde_json::from_slice(&bytes).expect("digest");
        assert_eq!(digest.stats(), ring.stats());
    }

    #[test]
    fn the_hash_follows_the_command_and_kind() {
        let a = Command::Argv(vec!["sleep".into(), "1".into()]);
        let b = Command::Argv(vec!["sleep".into(), "2".into()]);
        let joined = Command::Argv(vec!["sleep 1".into()]);
        assert_eq!(command_hash(Kind::Task, &a), command_hash(Kind::Task, &a));
        assert_ne!(command_hash(Kind::Task, &a), command_hash(Kind::Task, &b));
        assert_ne!(
            command_hash(Kind::Task, &a),
            command_hash(Kind::Service, &a)
        );
        assert_ne!(
            command_hash(Kind::Task, &a),
            command_hash(Kind::Task, &joined)
        );
        assert_eq!(command_hash(Kind::Task, &a).len(), 16);
    }
}
