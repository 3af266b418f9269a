//! The incremental matcher: the compiled pattern run over one partition's rows as they come,
//! in order, holding only the match attempts still open.
//!
//! A *match attempt* starts at each row (unless an earlier match skipped past it) and holds
//! its *threads*: the paths through the pattern still alive, in preference order, each
//! waiting at a `Take` (or `$`) with the variables it mapped so far. Each row advances every
//! attempt's threads (a Pike VM): a thread whose DEFINE holds takes the row and follows the
//! program's splits and jumps to its next waits. A thread that reaches `Accept` is the
//! attempt's match unless a thread before it (more preferred) is still alive, so the threads
//! after it are dropped; the attempt is decided when no thread is left. Decided attempts are
//! reported in row order: the first undecided attempt holds back those after it, and a match
//! drops the attempts its AFTER MATCH SKIP passes over.
//!
//! WITHIN: a thread may not take a row whose time is the attempt's first row's time plus the
//! interval or later. When the watermark reaches that time, no such row can still come, so
//! the attempt's waiting threads are cut at once ([`Matcher::advance`]); an attempt that ends
//! with no match because of the cut *timed out*, and its most preferred cut thread is its
//! partial match.
//!
//! Two threads of one attempt at the same instruction have the same future when the DEFINE
//! conditions do not depend on what the path mapped (`dedup`): the less preferred one is then
//! dropped, which bounds the threads by the program's length. Otherwise every path is kept, up
//! to [`MAX_THREADS`].

use std::collections::VecDeque;

use super::pattern::{Inst, Program, Var};
use crate::error::{Error, Result, sqlstate};

/// The most threads one match attempt may hold (paths are kept apart when DEFINE reads what
/// they mapped).
pub const MAX_THREADS: usize = 10_000;

/// A path's variables, one per row from the attempt's start; the high bit marks a row inside
/// `{- -}` (not output by ALL ROWS PER MATCH).
pub type Path = Vec<u16>;

pub const EXCLUDED: u16 = 0x8000;

/// The variable a path entry maps its row to.
pub fn var_of(entry: u16) -> Var {
    entry & !EXCLUDED
}

/// Whether a row may be mapped to a variable: DEFINE, evaluated with running semantics.
pub trait Define {
    /// Whether row `row` may be mapped to `var` by a path that started at `start` and mapped
    /// rows `start..row` to `path`.
    fn holds(&mut self, var: Var, start: u64, path: &[u16], row: u64) -> Result<bool>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    PastLastRow,
    ToNextRow,
    /// To the first / last row mapped to any of these variables (a SUBSET's).
    ToFirst(u64),
    ToLast(u64),
}

/// How a pattern is matched.
#[derive(Debug, Clone)]
pub struct MatchConfig {
    pub program: Program,
    pub skip: Skip,
    /// WITHIN, in the order column's units (microseconds).
    pub within: Option<i64>,
    /// Report attempts that timed out at WITHIN.
    pub timeouts: bool,
    /// DEFINE reads only the row being mapped and rows at physical offsets from it.
    pub dedup: bool,
}

/// A decided attempt that is reported: a match, or a timed-out partial match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub start: u64,
    pub path: Path,
    /// MATCH_NUMBER(): 1, 2, ... per partition.
    pub number: u64,
    pub timed_out: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub pc: u32,
    pub path: Path,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub start: u64,
    pub start_ts: i64,
    /// Alive threads in preference order.
    pub threads: Vec<Thread>,
    /// The most preferred accepted path so far.
    pub accepted: Option<Path>,
    /// The most preferred thread cut by WITHIN.
    pub cut: Option<Path>,
}

/// One partition's open attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partition {
    pub attempts: VecDeque<Attempt>,
    /// Position of the next row.
    pub next: u64,
    /// Attempts start at or after this position (earlier rows were skipped past).
    pub resume: u64,
    /// Matches reported so far (MATCH_NUMBER).
    pub matches: u64,
}

impl Partition {
    /// The first row an open attempt may still read (None: no attempt is open).
    pub fn oldest(&self) -> Option<u64> {
        self.attempts.front().map(|a| a.start)
    }
}

pub struct Matcher {
    config: MatchConfig,
    /// Scratch: instructions visited in the current closure outside any loop iteration it
    /// entered (by generation), and those visited inside (by instruction and loops entered).
    visited: Vec<u32>,
    generation: u32,
    visited_in_loops: ahash::AHashSet<(u32, u64)>,
    /// Scratch: the closure's paths still to follow.
    stack: Vec<(u32, Path, u64)>,
}

/// Where a closure is computed: the position of the next row, and whether the partition
/// has ended (`$` holds).
#[derive(Clone, Copy)]
struct At {
    next: u64,
    ended: bool,
}

impl Matcher {
    pub fn new(config: MatchConfig) -> Self {
        let n = config.program.insts.len();
        Self {
            config,
            visited: vec![0; n],
            generation: 0,
            visited_in_loops: Default::default(),
            stack: Vec::new(),
        }
    }

    pub fn config(&self) -> &MatchConfig {
        &self.config
    }

    /// Feeds the partition's next row (position `p.next`, time `ts`); decided attempts are
    /// appended to `out` in order.
    pub fn push(
        &mut self,
        p: &mut Partition,
        ts: i64,
        define: &mut dyn Define,
        out: &mut Vec<Found>,
    ) -> Result<()> {
        let row = p.next;
        p.next += 1;
        if row >= p.resume {
            let mut attempt = Attempt {
                start: row,
                start_ts: ts,
                threads: Vec::new(),
                accepted: None,
                cut: None,
            };
            let at = At {
                next: row,
                ended: false,
            };
            self.fresh();
            self.closure(0, Vec::new(), at, &mut attempt)?;
            p.attempts.push_back(attempt);
        }
        for attempt in p.attempts.iter_mut() {
            if self
                .config
                .within
                .is_some_and(|w| ts - attempt.start_ts >= w)
            {
                self.cut(attempt);
                // A row came: `$` fails too.
                attempt.threads.clear();
                continue;
            }
            self.step(attempt, row, define)?;
        }
        self.decide(p, out);
        Ok(())
    }

    /// The watermark reached `watermark`: every later row is at or after it, so attempts whose
    /// WITHIN ends by then are cut.
    pub fn advance(&mut self, p: &mut Partition, watermark: i64, out: &mut Vec<Found>) {
        let Some(within) = self.config.within else {
            return;
        };
        for attempt in p.attempts.iter_mut() {
            if attempt.start_ts.saturating_add(within) <= watermark {
                self.cut(attempt);
            }
        }
        self.decide(p, out);
    }

    /// The partition has no more rows (a batch query): `$` holds, and what still waits for a
    /// row fails, or times out under WITHIN.
    pub fn finish(&mut self, p: &mut Partition, out: &mut Vec<Found>) -> Result<()> {
        let at = At {
            next: p.next,
            ended: true,
        };
        for attempt in p.attempts.iter_mut() {
            let threads = std::mem::take(&mut attempt.threads);
            self.fresh();
            for t in threads {
                if !matches!(self.config.program.insts[t.pc as usize], Inst::End) {
                    attempt.threads.push(t);
                    continue;
                }
                if !self.config.dedup {
                    self.fresh();
                }
                if self.closure(t.pc + 1, t.path, at, attempt)? {
                    break;
                }
            }
            // Every thread left waits for a row, which will not come.
            for t in std::mem::take(&mut attempt.threads) {
                if self.config.within.is_some() && attempt.cut.is_none() {
                    attempt.cut = Some(t.path);
                }
            }
        }
        self.decide(p, out);
        Ok(())
    }

    /// Cuts the threads waiting for a row (WITHIN passed); those waiting for the end of the
    /// partition (`$`) stay.
    fn cut(&self, attempt: &mut Attempt) {
        let insts = &self.config.program.insts;
        for t in std::mem::take(&mut attempt.threads) {
            match insts[t.pc as usize] {
                Inst::End => attempt.threads.push(t),
                _ if attempt.cut.is_none() => attempt.cut = Some(t.path),
                _ => {}
            }
        }
    }

    fn step(&mut self, attempt: &mut Attempt, row: u64, define: &mut dyn Define) -> Result<()> {
        if attempt.threads.is_empty() {
            return Ok(());
        }
        let threads = std::mem::take(&mut attempt.threads);
        let at = At {
            next: row + 1,
            ended: false,
        };
        self.fresh();
        for Thread { pc, mut path } in threads {
            let Inst::Take { var, excluded } = self.config.program.insts[pc as usize] else {
                // `$` waits for the partition's end; a row came instead.
                continue;
            };
            if !define.holds(var, attempt.start, &path, row)? {
                continue;
            }
            path.push(var | if excluded { EXCLUDED } else { 0 });
            if !self.config.dedup {
                self.fresh();
            }
            // Threads after one that reached `Accept` are less preferred than its match.
            if self.closure(pc + 1, path, at, attempt)? {
                break;
            }
        }
        Ok(())
    }

    /// Starts a new set of visited instructions.
    fn fresh(&mut self) {
        self.visited_in_loops.clear();
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.visited.fill(0);
            self.generation = 1;
        }
    }

    /// Whether `pc` was visited in this closure with the same loops entered (those that
    /// enclose it: the others cannot matter to its future); marks it visited.
    fn seen(&mut self, pc: u32, entered: u64) -> bool {
        let entered = entered & self.config.program.enclosing[pc as usize];
        if entered == 0 {
            let seen = self.visited[pc as usize] == self.generation;
            self.visited[pc as usize] = self.generation;
            seen
        } else {
            !self.visited_in_loops.insert((pc, entered))
        }
    }

    /// Follows splits and jumps from `pc`, adding a thread at each `Take` or `$` reached (in
    /// preference order) and recording `Accept`. A path that ends a loop iteration it entered
    /// in this closure (mapping no row) is dropped, and so is one reaching an instruction
    /// already visited in this closure in the same state (same path, same loops entered: a
    /// more preferred path has the same future). Returns whether it reached `Accept`.
    fn closure(&mut self, pc: u32, path: Path, at: At, attempt: &mut Attempt) -> Result<bool> {
        // (instruction, path, loops whose iteration began in this closure)
        let mut stack = std::mem::take(&mut self.stack);
        stack.clear();
        stack.push((pc, path, 0u64));
        let reached = self.follow(&mut stack, at, attempt);
        self.stack = stack;
        reached
    }

    fn follow(
        &mut self,
        stack: &mut Vec<(u32, Path, u64)>,
        at: At,
        attempt: &mut Attempt,
    ) -> Result<bool> {
        while let Some((pc, path, entered)) = stack.pop() {
            let inst = self.config.program.insts[pc as usize];
            // A thread's future after it takes a row does not depend on the loops entered.
            let waits = matches!(inst, Inst::Take { .. } | Inst::End) && !at.ended;
            if self.seen(pc, if waits { 0 } else { entered }) {
                continue;
            }
            match inst {
                Inst::Take { .. } => {
                    if attempt.threads.len() >= MAX_THREADS {
                        return Err(Error::user(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!(
                                "MATCH_RECOGNIZE: a match attempt has more than {MAX_THREADS} \
                                 alternative paths; make the PATTERN less ambiguous or bound \
                                 it with WITHIN"
                            ),
                        ));
                    }
                    attempt.threads.push(Thread { pc, path });
                }
                Inst::End if at.ended => stack.push((pc + 1, path, entered)),
                Inst::End => attempt.threads.push(Thread { pc, path }),
                Inst::Start => {
                    if at.next == 0 {
                        stack.push((pc + 1, path, entered));
                    }
                }
                Inst::Jump(to) => stack.push((to, path, entered)),
                Inst::Split(first, second) => {
                    stack.push((second, path.clone(), entered));
                    stack.push((first, path, entered));
                }
                Inst::Loop {
                    id,
                    body,
                    exit,
                    greedy,
                } => {
                    let iterate = (body, entered | (1 << id));
                    let leave = (exit, entered);
                    let (first, second) = match greedy {
                        true => (iterate, leave),
                        false => (leave, iterate),
                    };
                    stack.push((second.0, path.clone(), second.1));
                    stack.push((first.0, path, first.1));
                }
                Inst::Back { id, to } => {
                    // An iteration that began in this closure mapped no row.
                    if entered & (1 << id) == 0 {
                        stack.push((to, path, entered));
                    }
                }
                Inst::Accept => {
                    attempt.accepted = Some(path);
                    // Less preferred paths of this closure are dropped.
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Reports the attempts decided at the front, in order.
    fn decide(&mut self, p: &mut Partition, out: &mut Vec<Found>) {
        while let Some(front) = p.attempts.front() {
            if !front.threads.is_empty() {
                break;
            }
            let a = p.attempts.pop_front().expect("front exists");
            if let Some(path) = a.accepted {
                p.matches += 1;
                p.resume = p.resume.max(self.resume_after(a.start, &path));
                while p.attempts.front().is_some_and(|n| n.start < p.resume) {
                    p.attempts.pop_front();
                }
                out.push(Found {
                    start: a.start,
                    path,
                    number: p.matches,
                    timed_out: false,
                });
            } else if let Some(path) = a.cut.filter(|_| self.config.timeouts) {
                p.matches += 1;
                out.push(Found {
                    start: a.start,
                    path,
                    number: p.matches,
                    timed_out: true,
                });
            }
        }
    }

    /// Where the next attempt may start after a match.
    fn resume_after(&self, start: u64, path: &[u16]) -> u64 {
        let last = start + path.len() as u64;
        let var_rows = |vars: u64| {
            path.iter()
                .enumerate()
                .filter(move |(_, e)| vars & (1 << var_of(**e)) != 0)
                .map(|(i, _)| start + i as u64)
        };
        let target = match self.config.skip {
            Skip::PastLastRow => last,
            Skip::ToNextRow => start + 1,
            Skip::ToFirst(vars) => var_rows(vars).next().unwrap_or(start),
            Skip::ToLast(vars) => var_rows(vars).next_back().unwrap_or(start),
        };
        // Skipping to the match's own first row would find the same match again: go on
        // from the next row instead.
        target.max(start + 1)
    }
}
