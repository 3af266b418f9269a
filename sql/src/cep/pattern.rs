//! Row patterns (the PATTERN of MATCH_RECOGNIZE) and the program they compile to.
//!
//! A [`Pattern`] is the clause as written, over variable numbers. [`Program::compile`] turns
//! it into instructions for the matcher (`matcher.rs`), a Pike VM: `Take` maps one row to a
//! variable if its DEFINE holds; `Split` forks a path in preference order (the first branch is
//! preferred: greedy quantifiers prefer another iteration, reluctant ones prefer to stop,
//! alternation prefers its left side); `Start`/`End` are `^`/`$`. Quantifiers are unrolled:
//! `X{2,4}` is `X X (X (X)?)?` and `X{2,}` is `X X` then a loop. An unbounded loop's iteration
//! must map at least one row: the matcher drops a path that jumps back to a loop whose
//! iteration it entered without taking a row since, which is the rule the reference matcher
//! (`reference.rs`) applies to the pattern as written.

use crate::error::{Error, Result, sqlstate};

/// A pattern variable, by its index in the clause's list of variables.
pub type Var = u16;

/// The most instructions a pattern may compile to (quantifier bounds are unrolled).
pub const MAX_PROGRAM: usize = 100_000;

/// A row pattern as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Var(Var),
    /// `^`: the start of the partition.
    Start,
    /// `$`: the end of the partition.
    End,
    Concat(Vec<Pattern>),
    /// Alternatives in preference order.
    Alt(Vec<Pattern>),
    Repeat {
        inner: Box<Pattern>,
        min: u32,
        max: Option<u32>,
        greedy: bool,
    },
    /// `{- ... -}`: rows matched inside are not output by ALL ROWS PER MATCH.
    Exclude(Box<Pattern>),
}

impl Pattern {
    /// PERMUTE(a, b, ...): every order of the items, in lexicographic order of their
    /// positions (the standard's preference).
    pub fn permute(items: Vec<Pattern>) -> Result<Pattern> {
        if items.len() > 6 {
            return Err(Error::user(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "PERMUTE of more than 6 items is not supported (it would be 720+ alternatives)",
            ));
        }
        let mut orders = Vec::new();
        permutations(&mut (0..items.len()).collect(), 0, &mut orders);
        orders.sort();
        Ok(Pattern::Alt(
            orders
                .into_iter()
                .map(|o| Pattern::Concat(o.into_iter().map(|i| items[i].clone()).collect()))
                .collect(),
        ))
    }

    /// The pattern as written, with the variables' names.
    pub fn display(&self, vars: &[String]) -> String {
        let name = |v: &Var| {
            vars.get(*v as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{v}"))
        };
        match self {
            Pattern::Var(v) => name(v),
            Pattern::Start => "^".into(),
            Pattern::End => "$".into(),
            Pattern::Concat(items) => {
                let parts: Vec<String> = items.iter().map(|p| p.display(vars)).collect();
                format!("({})", parts.join(" "))
            }
            Pattern::Alt(items) => {
                let parts: Vec<String> = items.iter().map(|p| p.display(vars)).collect();
                format!("({})", parts.join(" | "))
            }
            Pattern::Exclude(inner) => format!("{{- {} -}}", inner.display(vars)),
            Pattern::Repeat {
                inner,
                min,
                max,
                greedy,
            } => {
                let q = match (min, max) {
                    (0, None) => "*".to_string(),
                    (1, None) => "+".to_string(),
                    (0, Some(1)) => "?".to_string(),
                    (n, None) => format!("{{{n},}}"),
                    (n, Some(m)) if n == m => format!("{{{n}}}"),
                    (n, Some(m)) => format!("{{{n},{m}}}"),
                };
                let lazy = if *greedy { "" } else { "?" };
                format!("{}{q}{lazy}", inner.display(vars))
            }
        }
    }

    /// Whether the pattern uses `^` or `$`.
    pub fn anchors(&self) -> (bool, bool) {
        match self {
            Pattern::Start => (true, false),
            Pattern::End => (false, true),
            Pattern::Var(_) => (false, false),
            Pattern::Concat(items) | Pattern::Alt(items) => {
                items.iter().fold((false, false), |(s, e), p| {
                    let (ps, pe) = p.anchors();
                    (s || ps, e || pe)
                })
            }
            Pattern::Repeat { inner, .. } | Pattern::Exclude(inner) => inner.anchors(),
        }
    }

    /// For each variable, the fewest rows any match maps before its first row mapped to it
    /// (None: the variable is never reached). How far back PREV can reach before a match.
    pub fn min_offsets(&self, vars: usize) -> Vec<Option<u32>> {
        let mut out = vec![None; vars];
        self.offsets(0, &mut out);
        out
    }

    /// Visits the pattern starting `before` rows into the match; returns the fewest rows it
    /// maps.
    fn offsets(&self, before: u32, out: &mut [Option<u32>]) -> u32 {
        match self {
            Pattern::Var(v) => {
                let slot = &mut out[*v as usize];
                *slot = Some(slot.map_or(before, |s| s.min(before)));
                1
            }
            Pattern::Start | Pattern::End => 0,
            Pattern::Concat(items) => {
                let mut at = before;
                for p in items {
                    at = at.saturating_add(p.offsets(at, out));
                }
                at - before
            }
            Pattern::Alt(items) => items
                .iter()
                .map(|p| p.offsets(before, out))
                .min()
                .unwrap_or(0),
            Pattern::Repeat { inner, min, .. } => {
                let one = inner.offsets(before, out);
                one.saturating_mul(*min)
            }
            Pattern::Exclude(inner) => inner.offsets(before, out),
        }
    }
}

fn permutations(items: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
    if k == items.len() {
        out.push(items.clone());
        return;
    }
    for i in k..items.len() {
        items.swap(k, i);
        permutations(items, k + 1, out);
        items.swap(k, i);
    }
}

/// One instruction of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inst {
    /// Map the current row to the variable if its condition holds, then go on.
    Take {
        var: Var,
        excluded: bool,
    },
    /// Go on at both, the first preferred.
    Split(u32, u32),
    Jump(u32),
    /// An unbounded loop's entry: an iteration (`body`) or past it, in preference order.
    Loop {
        id: u16,
        body: u32,
        exit: u32,
        greedy: bool,
    },
    /// The end of an iteration of loop `id`: back to its entry at `to`.
    Back {
        id: u16,
        to: u32,
    },
    /// Only at the partition's first row.
    Start,
    /// Only after the partition's last row.
    End,
    Accept,
}

/// The most unbounded quantifiers a pattern may have.
pub const MAX_LOOPS: usize = 64;

/// A compiled pattern; execution starts at instruction 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub insts: Vec<Inst>,
    /// Per instruction: the loops it is inside of (bit `id`).
    pub enclosing: Vec<u64>,
}

impl Program {
    pub fn compile(pattern: &Pattern) -> Result<Program> {
        let mut c = Compiler {
            insts: Vec::new(),
            loops: Vec::new(),
        };
        c.emit(pattern, false)?;
        c.push(Inst::Accept)?;
        let mut enclosing = vec![0u64; c.insts.len()];
        for (id, (from, to)) in c.loops.iter().enumerate() {
            for e in &mut enclosing[*from as usize..=*to as usize] {
                *e |= 1 << id;
            }
        }
        Ok(Program {
            insts: c.insts,
            enclosing,
        })
    }
}

struct Compiler {
    insts: Vec<Inst>,
    /// Each unbounded loop's first and last instruction.
    loops: Vec<(u32, u32)>,
}

impl Compiler {
    fn push(&mut self, inst: Inst) -> Result<u32> {
        if self.insts.len() >= MAX_PROGRAM {
            return Err(Error::user(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "the PATTERN is too large once its quantifiers are expanded \
                     (more than {MAX_PROGRAM} steps)"
                ),
            ));
        }
        self.insts.push(inst);
        Ok(self.insts.len() as u32 - 1)
    }

    fn here(&self) -> u32 {
        self.insts.len() as u32
    }

    fn patch(&mut self, at: u32, inst: Inst) {
        self.insts[at as usize] = inst;
    }

    fn emit(&mut self, p: &Pattern, excluded: bool) -> Result<()> {
        match p {
            Pattern::Var(var) => {
                self.push(Inst::Take {
                    var: *var,
                    excluded,
                })?;
            }
            Pattern::Start => {
                self.push(Inst::Start)?;
            }
            Pattern::End => {
                self.push(Inst::End)?;
            }
            Pattern::Concat(items) => {
                for item in items {
                    self.emit(item, excluded)?;
                }
            }
            Pattern::Alt(items) => self.alternation(items, excluded)?,
            Pattern::Exclude(inner) => self.emit(inner, true)?,
            Pattern::Repeat {
                inner,
                min,
                max,
                greedy,
            } => self.repeat(inner, *min, *max, *greedy, excluded)?,
        }
        Ok(())
    }

    /// `a | b | c`: split to a or (split to b or c); each side jumps past the rest.
    fn alternation(&mut self, items: &[Pattern], excluded: bool) -> Result<()> {
        let mut jumps = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if i + 1 == items.len() {
                self.emit(item, excluded)?;
                break;
            }
            let split = self.push(Inst::Split(0, 0))?;
            self.emit(item, excluded)?;
            jumps.push(self.push(Inst::Jump(0))?);
            let next = self.here();
            self.patch(split, Inst::Split(split + 1, next));
        }
        let end = self.here();
        for j in jumps {
            self.patch(j, Inst::Jump(end));
        }
        Ok(())
    }

    fn split(&mut self, at: u32, take: u32, skip: u32, greedy: bool) {
        let inst = match greedy {
            true => Inst::Split(take, skip),
            false => Inst::Split(skip, take),
        };
        self.patch(at, inst);
    }

    fn repeat(
        &mut self,
        inner: &Pattern,
        min: u32,
        max: Option<u32>,
        greedy: bool,
        excluded: bool,
    ) -> Result<()> {
        for _ in 0..min {
            self.emit(inner, excluded)?;
        }
        match max {
            // Optional iterations, nested: `(X (X)?)?`.
            Some(max) => {
                let mut splits = Vec::new();
                for _ in min..max {
                    let split = self.push(Inst::Split(0, 0))?;
                    self.emit(inner, excluded)?;
                    splits.push(split);
                }
                let end = self.here();
                for s in splits {
                    self.split(s, s + 1, end, greedy);
                }
            }
            // A loop: an iteration or past it; the iteration jumps back.
            None => {
                if self.loops.len() >= MAX_LOOPS {
                    return Err(Error::user(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        format!("a PATTERN may have at most {MAX_LOOPS} unbounded quantifiers"),
                    ));
                }
                let id = self.loops.len() as u16;
                self.loops.push((0, 0));
                let entry = self.push(Inst::Split(0, 0))?;
                self.emit(inner, excluded)?;
                let back = self.push(Inst::Back { id, to: entry })?;
                self.loops[id as usize] = (entry, back);
                self.patch(
                    entry,
                    Inst::Loop {
                        id,
                        body: entry + 1,
                        exit: back + 1,
                        greedy,
                    },
                );
            }
        }
        Ok(())
    }
}
