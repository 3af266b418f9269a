//! The reference matcher: MATCH_RECOGNIZE as the standard describes it, written for clarity
//! and checked against the incremental matcher (`matcher.rs`) on random inputs.
//!
//! Over a whole partition: try a match at the first row; the match found is the first path
//! in preference order (backtracking over the pattern as written: greedy quantifiers try one
//! more iteration first, reluctant ones one fewer, alternatives left to right); after a match
//! continue where AFTER MATCH SKIP says, otherwise at the next row. An unbounded quantifier's
//! iterations beyond its minimum must each map a row. Under WITHIN a path may not map a row
//! whose time is the first row's plus the interval or later; an attempt with no match one of
//! whose paths was cut that way (or ran out of rows) timed out, with the first such path as
//! its partial match.

use super::matcher::{Define, EXCLUDED, Found, MatchConfig, Path, Skip, var_of};
use super::pattern::Pattern;
use crate::error::Result;

/// Every match (and reported timeout) of `pattern` over one partition's rows, given their
/// times.
///
/// Backtracking takes exponential time on ambiguous patterns: past `budget` steps per attempt
/// it gives up (None).
pub fn find_all(
    pattern: &Pattern,
    config: &MatchConfig,
    times: &[i64],
    define: &mut dyn Define,
    budget: usize,
) -> Result<Option<Vec<Found>>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut number = 0;
    while start < times.len() {
        let mut search = Search {
            times,
            start,
            within: config.within,
            define: &mut *define,
            cut: None,
            budget,
        };
        let mut path = Vec::new();
        let found = one(
            &mut search,
            pattern,
            start,
            false,
            &mut path,
            &mut |_, _, p| Ok(Some(p.clone())),
        );
        if search.budget == 0 {
            return Ok(None);
        }
        match found? {
            Some(path) => {
                number += 1;
                let next = skip_target(config.skip, start as u64, &path) as usize;
                out.push(Found {
                    start: start as u64,
                    path,
                    number,
                    timed_out: false,
                });
                start = next;
            }
            None => {
                if let Some(path) = search.cut.filter(|_| config.timeouts) {
                    number += 1;
                    out.push(Found {
                        start: start as u64,
                        path,
                        number,
                        timed_out: true,
                    });
                }
                start += 1;
            }
        }
    }
    Ok(Some(out))
}

fn skip_target(skip: Skip, start: u64, path: &[u16]) -> u64 {
    let rows_of = |vars: u64| -> Vec<u64> {
        (0..path.len())
            .filter(|i| vars & (1 << var_of(path[*i])) != 0)
            .map(|i| start + i as u64)
            .collect()
    };
    let target = match skip {
        Skip::PastLastRow => start + path.len() as u64,
        Skip::ToNextRow => start + 1,
        Skip::ToFirst(vars) => rows_of(vars).first().copied().unwrap_or(start),
        Skip::ToLast(vars) => rows_of(vars).last().copied().unwrap_or(start),
    };
    target.max(start + 1)
}

/// The rest of the match after a piece: given the search, the position and the path so far,
/// the complete path if the rest matches.
type Rest<'r> = dyn FnMut(&mut Search<'_>, usize, &mut Path) -> Result<Option<Path>> + 'r;

struct Search<'a> {
    times: &'a [i64],
    start: usize,
    within: Option<i64>,
    define: &'a mut dyn Define,
    /// The first path cut by WITHIN (or by the end of the rows under WITHIN).
    cut: Option<Path>,
    /// Steps left before the search gives up.
    budget: usize,
}

/// Matches `p` at `pos`, then the rest.
fn one(
    s: &mut Search<'_>,
    p: &Pattern,
    pos: usize,
    excluded: bool,
    path: &mut Path,
    rest: &mut Rest<'_>,
) -> Result<Option<Path>> {
    if s.budget == 0 {
        return Err(crate::error::Error::internal(
            "reference search over budget",
        ));
    }
    s.budget -= 1;
    match p {
        Pattern::Var(v) => {
            let in_time =
                pos < s.times.len() && s.within.is_none_or(|w| s.times[pos] - s.times[s.start] < w);
            if !in_time {
                if s.within.is_some() && s.cut.is_none() {
                    s.cut = Some(path.clone());
                }
                return Ok(None);
            }
            if !s.define.holds(*v, s.start as u64, path, pos as u64)? {
                return Ok(None);
            }
            path.push(*v | if excluded { EXCLUDED } else { 0 });
            let found = rest(s, pos + 1, path)?;
            path.pop();
            Ok(found)
        }
        Pattern::Start if pos == 0 => rest(s, pos, path),
        Pattern::End if pos == s.times.len() => rest(s, pos, path),
        Pattern::Start | Pattern::End => Ok(None),
        Pattern::Exclude(inner) => one(s, inner, pos, true, path, rest),
        Pattern::Concat(items) => sequence(s, items, pos, excluded, path, rest),
        Pattern::Alt(items) => {
            for item in items {
                if let Some(found) = one(s, item, pos, excluded, path, rest)? {
                    return Ok(Some(found));
                }
            }
            Ok(None)
        }
        Pattern::Repeat {
            inner,
            min,
            max,
            greedy,
        } => {
            let r = Repeat {
                inner,
                greedy: *greedy,
                excluded,
            };
            r.run(s, *min, *max, pos, path, rest)
        }
    }
}

fn sequence(
    s: &mut Search<'_>,
    items: &[Pattern],
    pos: usize,
    excluded: bool,
    path: &mut Path,
    rest: &mut Rest<'_>,
) -> Result<Option<Path>> {
    let Some((first, others)) = items.split_first() else {
        return rest(s, pos, path);
    };
    one(s, first, pos, excluded, path, &mut |s, at, path| {
        sequence(s, others, at, excluded, path, rest)
    })
}

/// A quantified piece.
#[derive(Clone, Copy)]
struct Repeat<'p> {
    inner: &'p Pattern,
    greedy: bool,
    excluded: bool,
}

impl Repeat<'_> {
    /// `min` more iterations, then up to `max` more: each optional iteration may map no rows
    /// under a bound, while beyond the minimum of an unbounded quantifier each iteration must
    /// map at least one.
    fn run(
        self,
        s: &mut Search<'_>,
        min: u32,
        max: Option<u32>,
        pos: usize,
        path: &mut Path,
        rest: &mut Rest<'_>,
    ) -> Result<Option<Path>> {
        let less = max.map(|m| m.saturating_sub(1));
        if min > 0 {
            return one(
                s,
                self.inner,
                pos,
                self.excluded,
                path,
                &mut |s, at, path| self.run(s, min - 1, less, at, path, rest),
            );
        }
        if max == Some(0) {
            return rest(s, pos, path);
        }
        let another = |s: &mut Search<'_>, path: &mut Path, rest: &mut Rest<'_>| {
            one(
                s,
                self.inner,
                pos,
                self.excluded,
                path,
                &mut |s, at, path| {
                    if max.is_none() && at == pos {
                        return Ok(None);
                    }
                    self.run(s, 0, less, at, path, rest)
                },
            )
        };
        if self.greedy {
            if let Some(found) = another(s, path, rest)? {
                return Ok(Some(found));
            }
            rest(s, pos, path)
        } else {
            if let Some(found) = rest(s, pos, path)? {
                return Ok(Some(found));
            }
            another(s, path, rest)
        }
    }
}
