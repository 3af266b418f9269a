//! The incremental matcher against the reference matcher on random patterns and rows.

use super::matcher::{Define, Found, MatchConfig, Matcher, Partition, Skip, var_of};
use super::pattern::{Pattern, Program, Var};
use super::reference;
use crate::error::Result;

/// xorshift64*, seeded (the seed is printed on failure).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const VARS: u16 = 4;

fn random_pattern(rng: &mut Rng, depth: u32, anchors: bool) -> Pattern {
    let leaf = depth == 0 || rng.chance(35);
    if leaf {
        return match rng.below(40) {
            0 if anchors => Pattern::Start,
            1 if anchors => Pattern::End,
            2 => Pattern::Concat(Vec::new()),
            _ => Pattern::Var(rng.below(VARS as u64) as Var),
        };
    }
    match rng.below(10) {
        0..=3 => Pattern::Concat(
            (0..1 + rng.below(3))
                .map(|_| random_pattern(rng, depth - 1, anchors))
                .collect(),
        ),
        4..=5 => Pattern::Alt(
            (0..2 + rng.below(2))
                .map(|_| random_pattern(rng, depth - 1, anchors))
                .collect(),
        ),
        6 => Pattern::Exclude(Box::new(random_pattern(rng, depth - 1, anchors))),
        _ => {
            let min = rng.below(3) as u32;
            let max = match rng.below(3) {
                0 => None,
                _ => Some(min + rng.below(3) as u32),
            };
            Pattern::Repeat {
                inner: Box::new(random_pattern(rng, depth - 1, anchors)),
                min,
                max,
                greedy: rng.chance(60),
            }
        }
    }
}

/// Rows of small values; DEFINE either reads only the row (and the one before it), or also
/// what the path mapped so far.
struct Rows {
    values: Vec<u8>,
    /// Per variable: the values it accepts.
    masks: [u8; VARS as usize],
    /// Per variable: also require a rise over the previous row.
    rise: [bool; VARS as usize],
    /// Per variable: at most this many rows mapped to it so far (path-dependent), and a value
    /// at least that of the last row mapped to variable 0.
    limit: [Option<usize>; VARS as usize],
    over_first_var: [bool; VARS as usize],
}

impl Rows {
    fn random(rng: &mut Rng, n: usize, path_dependent: bool) -> Self {
        let mut masks = [0u8; VARS as usize];
        let mut rise = [false; VARS as usize];
        let mut limit = [None; VARS as usize];
        let mut over_first_var = [false; VARS as usize];
        for v in 0..VARS as usize {
            masks[v] = rng.below(16) as u8 | if rng.chance(30) { 15 } else { 0 };
            rise[v] = rng.chance(15);
            if path_dependent {
                limit[v] = rng.chance(40).then(|| 1 + rng.below(3) as usize);
                over_first_var[v] = rng.chance(30);
            }
        }
        Self {
            values: (0..n).map(|_| rng.below(4) as u8).collect(),
            masks,
            rise,
            limit,
            over_first_var,
        }
    }
}

impl Define for Rows {
    fn holds(&mut self, var: Var, start: u64, path: &[u16], row: u64) -> Result<bool> {
        let v = var as usize;
        let value = self.values[row as usize];
        if self.masks[v] & (1 << value) == 0 {
            return Ok(false);
        }
        if self.rise[v] && row > 0 && self.values[row as usize - 1] >= value {
            return Ok(false);
        }
        if let Some(limit) = self.limit[v]
            && path.iter().filter(|e| var_of(**e) == var).count() >= limit
        {
            return Ok(false);
        }
        if self.over_first_var[v]
            && let Some(i) = path.iter().rposition(|e| var_of(*e) == 0)
            && self.values[start as usize + i] > value
        {
            return Ok(false);
        }
        Ok(true)
    }
}

fn random_skip(rng: &mut Rng) -> Skip {
    match rng.below(4) {
        0 => Skip::PastLastRow,
        1 => Skip::ToNextRow,
        2 => Skip::ToFirst(1 + rng.below(15)),
        _ => Skip::ToLast(1 + rng.below(15)),
    }
}

/// Runs the incremental matcher over the rows, with watermarks in between and its state
/// cloned (as a restore would) at random points.
fn incremental(
    rng: &mut Rng,
    config: &MatchConfig,
    times: &[i64],
    rows: &mut Rows,
) -> Result<Vec<Found>> {
    let mut matcher = Matcher::new(config.clone());
    let mut p = Partition::default();
    let mut out = Vec::new();
    for (i, ts) in times.iter().enumerate() {
        matcher.push(&mut p, *ts, rows, &mut out)?;
        if let Some(next) = times.get(i + 1)
            && rng.chance(40)
        {
            // Later rows are at or after the watermark.
            matcher.advance(&mut p, next - rng.below(2) as i64, &mut out);
        }
        if rng.chance(20) {
            // A restore: a new matcher over the stored partition.
            p = p.clone();
            matcher = Matcher::new(config.clone());
        }
    }
    matcher.finish(&mut p, &mut out)?;
    Ok(out)
}

fn check(seed: u64, cases: usize, path_dependent: bool, anchors: bool) {
    let mut rng = Rng(seed);
    let (mut compared, mut with_matches, mut with_timeouts) = (0, 0, 0);
    for case in 0..cases {
        let pattern = random_pattern(&mut rng, 4, anchors);
        if std::env::var("EDDY_CEP_TRACE").is_ok() {
            eprintln!("case {case}: {pattern:?}");
        }
        let program = Program::compile(&pattern).expect("compiles");
        let n = rng.below(14) as usize;
        let mut times = Vec::with_capacity(n);
        let mut t = 0;
        for _ in 0..n {
            t += rng.below(3) as i64;
            times.push(t);
        }
        let within = rng.chance(50).then(|| 1 + rng.below(6) as i64);
        let config = MatchConfig {
            program,
            skip: random_skip(&mut rng),
            within,
            timeouts: within.is_some() && rng.chance(60),
            dedup: !path_dependent,
        };
        let mut rows = Rows::random(&mut rng, n, path_dependent);
        let Some(expected) =
            reference::find_all(&pattern, &config, &times, &mut rows, 200_000).expect("ref")
        else {
            continue;
        };
        let actual = match incremental(&mut rng, &config, &times, &mut rows) {
            Err(e) if path_dependent && e.to_string().contains("alternative paths") => continue,
            other => other.expect("incremental"),
        };
        compared += 1;
        with_matches += usize::from(expected.iter().any(|f| !f.timed_out && !f.path.is_empty()));
        with_timeouts += usize::from(expected.iter().any(|f| f.timed_out));
        assert_eq!(
            actual, expected,
            "seed {seed} case {case}: pattern {pattern:?}\nconfig skip {:?} within {:?} \
             timeouts {}\nvalues {:?} times {times:?}",
            config.skip, config.within, config.timeouts, rows.values
        );
    }
    // The random cases exercise what they are meant to.
    assert!(
        compared > cases * 9 / 10,
        "seed {seed}: only {compared} cases compared"
    );
    assert!(
        with_matches > cases / 5,
        "seed {seed}: {with_matches} cases matched"
    );
    assert!(
        with_timeouts > cases / 20,
        "seed {seed}: {with_timeouts} cases timed out"
    );
}

fn seed() -> u64 {
    let seed = std::env::var("EDDY_CEP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("EDDY_CEP_SEED={seed}");
    seed
}

#[test]
fn incremental_matches_reference_with_row_conditions() {
    check(seed(), 4000, false, true);
}

#[test]
fn incremental_matches_reference_with_running_conditions() {
    check(seed(), 4000, true, true);
}

#[test]
fn greedy_and_reluctant_preferences() {
    // A+ B over a a a b: greedy takes every a; A+? B as well (B must follow), but with
    // `A+? A*` the reluctant part takes one row and the greedy rest the others.
    let a = Pattern::Var(0);
    let b = Pattern::Var(1);
    let plus = |greedy| Pattern::Repeat {
        inner: Box::new(a.clone()),
        min: 1,
        max: None,
        greedy,
    };
    let mut rows = Rows {
        values: vec![0, 0, 0, 1],
        masks: [1, 2, 0, 0],
        rise: [false; 4],
        limit: [None; 4],
        over_first_var: [false; 4],
    };
    let times = [0, 1, 2, 3];
    let run = |pattern: Pattern, rows: &mut Rows| {
        let config = MatchConfig {
            program: Program::compile(&pattern).unwrap(),
            skip: Skip::PastLastRow,
            within: None,
            timeouts: false,
            dedup: true,
        };
        let mut m = Matcher::new(config);
        let mut p = Partition::default();
        let mut out = Vec::new();
        for t in times {
            m.push(&mut p, t, rows, &mut out).unwrap();
        }
        m.finish(&mut p, &mut out).unwrap();
        out.into_iter()
            .map(|f| (f.start, f.path))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        run(Pattern::Concat(vec![plus(true), b.clone()]), &mut rows),
        vec![(0, vec![0, 0, 0, 1])]
    );
    // Reluctant alone: one row per match.
    assert_eq!(
        run(plus(false), &mut rows),
        vec![(0, vec![0]), (1, vec![0]), (2, vec![0])]
    );
    assert_eq!(run(plus(true), &mut rows), vec![(0, vec![0, 0, 0])]);
}

#[test]
fn timeout_reports_the_partial_match() {
    // A B WITHIN 3 with timeouts: an A whose B does not come within 3 time units is
    // reported as timed out with its A; an A followed by B in time is a match.
    let pattern = Pattern::Concat(vec![Pattern::Var(0), Pattern::Var(1)]);
    let config = MatchConfig {
        program: Program::compile(&pattern).unwrap(),
        skip: Skip::PastLastRow,
        within: Some(3),
        timeouts: true,
        dedup: true,
    };
    let mut rows = Rows {
        // a(0) x(1) x(5) a(6) b(7)
        values: vec![0, 2, 2, 0, 1],
        masks: [1, 2, 0, 0],
        rise: [false; 4],
        limit: [None; 4],
        over_first_var: [false; 4],
    };
    let mut m = Matcher::new(config);
    let mut p = Partition::default();
    let mut out = Vec::new();
    m.push(&mut p, 0, &mut rows, &mut out).unwrap();
    // The watermark reaches 3: the attempt at row 0 times out at once, before any later row.
    m.advance(&mut p, 3, &mut out);
    assert_eq!(
        out,
        vec![Found {
            start: 0,
            path: vec![0],
            number: 1,
            timed_out: true
        }]
    );
    assert!(p.attempts.is_empty(), "no open attempt holds state");
}
