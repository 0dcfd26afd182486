//! How deeply each item of a document sits in nested shared types, known across
//! updates.
//!
//! yrs deletes a shared type by recursion into the types nested in it (and frees and
//! collects them the same way), so a chain of types nested some thousands deep
//! overflows the stack the first time its top is deleted: the process aborts (a tab
//! in the browser), whoever deletes it. [`check`](super::check) bounds the nesting
//! within one update, but a peer can nest each update's types in the last's, so the
//! bound must hold for the document: a new shared type may sit at most
//! [`MAX_TYPE_DEPTH`] deep, counted from the root through every update before it.
//!
//! yrs 0.28 does not say where an item sits (its block store is private), so this
//! module keeps it: [`Levels`] maps every item this document took in (remote ones when
//! they are admitted, local ones as they are committed) to its level, by clock range
//! per client. An item's level follows from the update alone: a root type's items are at
//! level 1, an item under a named parent one below that parent, an item with an
//! origin beside it. So [`check`](super::check) works out each update's
//! [`Shape`] as it reads it, levels relative to items of other updates where it must,
//! and [`Levels::admit`] settles those against what came before:
//!
//! - a shared type deeper than [`MAX_TYPE_DEPTH`] is refused, with its update;
//! - one whose level cannot be told yet (it builds on an item not yet taken in, as an
//!   update from a third peer may, or a piece of a catch-up on a later piece) goes to
//!   yrs, which keeps it pending until that item comes, as it must (yrs integrates per
//!   client and block, so holding whole updates back here would deadlock pieces that
//!   build on each other); it is kept as stalled, and an update that brings the item
//!   it waits for is checked against it first: if it would let yrs integrate a type
//!   too deep, what yrs keeps pending is given up before that update goes in;
//! - an item two updates describe differently (an honest author never does: a peer
//!   lying about another's history) counts at the deeper of the two levels, or when
//!   that cannot be told, is disputed: nothing nested under it is admitted.
//!
//! Each level is stored once per run of items of one client at the same level (a
//! client's items mostly are), so the index is a small fraction of the document.

use std::collections::BTreeMap;

use bevy::platform::collections::HashMap;

/// Shared types nested in one another, at most: a new type deeper than this is refused.
/// Game state nests a few levels (the entity document four); yrs' recursion costs far
/// below any thread's stack at this depth.
pub const MAX_TYPE_DEPTH: u8 = 32;

/// An item's id: its client and clock.
pub(crate) type Id = (u64, u32);

/// How far a level lookup follows levels relative to other items, at most.
const MAX_HOPS: usize = 256;

/// Where an item sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// This many shared types deep (a root type's items are at 1); 0 for a collected
    /// (GC) block, which nothing can nest in.
    Known(u8),
    /// As deep as item `of`, plus `plus` (its parent's level is its own, minus one).
    After { of: Id, plus: u8 },
    /// Two updates described these items differently: nothing may nest under them.
    Disputed,
}

/// Why a level cannot be settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsettled {
    /// It builds on this item, which the document has not taken in yet.
    Missing(Id),
    /// It builds on disputed items, or past [`MAX_HOPS`] relative levels.
    Refused,
}

/// Runs of items of each client at one level: start clock to (end clock, level).
#[derive(Debug, Default, Clone)]
pub(crate) struct Runs {
    clients: HashMap<u64, BTreeMap<u32, (u32, Level)>>,
}

impl Runs {
    /// The level recorded for item `id`.
    pub(crate) fn find(&self, (client, clock): Id) -> Option<Level> {
        let runs = self.clients.get(&client)?;
        let (_, &(end, level)) = runs.range(..=clock).next_back()?;
        (clock < end).then_some(level)
    }

    /// How many runs are recorded.
    fn len(&self) -> usize {
        self.clients.values().map(BTreeMap::len).sum()
    }

    /// Records `level` for items `start..end` of `client`, none recorded yet (the
    /// check reads each client's blocks once, in order): joined to the run before when
    /// it continues it at the same level.
    pub(crate) fn push(&mut self, client: u64, start: u32, end: u32, level: Level) {
        let runs = self.clients.entry(client).or_default();
        if let Some((_, last)) = runs.range_mut(..start).next_back()
            && last.0 == start
            && last.1 == level
        {
            last.0 = end;
            return;
        }
        runs.insert(start, (end, level));
    }

    /// Runs of `client` that overlap `start..end`, removed.
    fn take_overlapping(&mut self, client: u64, start: u32, end: u32) -> Vec<(u32, u32, Level)> {
        let Some(runs) = self.clients.get_mut(&client) else {
            return Vec::new();
        };
        let mut keys: Vec<u32> = Vec::new();
        if let Some((&key, &(run_end, _))) = runs.range(..start).next_back()
            && run_end > start
        {
            keys.push(key);
        }
        keys.extend(runs.range(start..end).map(|(&key, _)| key));
        keys.into_iter()
            .filter_map(|key| {
                runs.remove(&key)
                    .map(|(run_end, level)| (key, run_end, level))
            })
            .collect()
    }
}

/// One client's runs in an update, in clock order: start, end, level.
type ClientRuns = Vec<(u32, u32, Level)>;

/// What [`check`](super::check) found of one update: the levels of its items (relative
/// to other updates' where they build on them) and its shared types.
#[derive(Debug, Default, Clone)]
pub(crate) struct Shape {
    /// Per client (each listed once in an update), its runs in clock order.
    clients: Vec<(u64, ClientRuns)>,
    /// Where each client is in `clients`.
    at: HashMap<u64, usize>,
    /// The update's shared types whose level depends on other updates.
    pub(crate) types: Vec<(Id, Level)>,
}

impl Shape {
    /// Records the level of items `start..end` of `client`, read in order.
    pub(crate) fn push(&mut self, client: u64, start: u32, end: u32, level: Level) {
        match self.clients.last_mut() {
            Some((last, runs)) if *last == client => {
                if let Some(run) = runs.last_mut()
                    && run.1 == start
                    && run.2 == level
                {
                    run.1 = end;
                } else {
                    runs.push((start, end, level));
                }
            }
            _ => {
                self.at.insert(client, self.clients.len());
                self.clients.push((client, vec![(start, end, level)]));
            }
        }
    }

    /// `level` settled against the items read so far.
    pub(crate) fn settle(&self, level: Level) -> Level {
        within(level, self, &Runs::default())
    }

    /// Notes a shared type whose level depends on other updates.
    pub(crate) fn push_type(&mut self, id: Id, level: Level) {
        self.types.push((id, level));
    }

    /// Settles relative levels that point into this update itself (an item can
    /// build on a client read later), once all of it is read. A shared type found too
    /// deep is refused here (unless `local`: this peer's own, recorded as they are).
    pub(crate) fn finish(&mut self, local: bool) -> Result<(), ()> {
        let own = Runs::default();
        // Most levels are known as read; only relative ones may point here.
        let relative: Vec<(usize, usize, Level)> = self
            .clients
            .iter()
            .enumerate()
            .flat_map(|(c, (_, runs))| {
                runs.iter()
                    .enumerate()
                    .filter_map(move |(r, &(_, _, level))| {
                        matches!(level, Level::After { .. }).then_some((c, r, level))
                    })
            })
            .map(|(c, r, level)| (c, r, within(level, self, &own)))
            .collect();
        for (c, r, level) in relative {
            self.clients[c].1[r].2 = level;
        }
        let mut types = Vec::with_capacity(self.types.len());
        for &(id, level) in &self.types {
            match within(level, self, &own) {
                Level::Known(depth) if depth > MAX_TYPE_DEPTH && !local => return Err(()),
                Level::Disputed if !local => return Err(()),
                Level::Known(_) | Level::Disputed => {}
                relative => types.push((id, relative)),
            }
        }
        self.types = types;
        Ok(())
    }
}

/// Where levels are looked up.
pub(crate) trait Lookup {
    fn find(&self, id: Id) -> Option<Level>;
}

impl Lookup for Runs {
    fn find(&self, id: Id) -> Option<Level> {
        Runs::find(self, id)
    }
}

impl Lookup for Shape {
    fn find(&self, (client, clock): Id) -> Option<Level> {
        let runs = match self.clients.last() {
            Some((last, runs)) if *last == client => runs,
            _ => &self.clients[*self.at.get(&client)?].1,
        };
        let after = runs.partition_point(|&(start, _, _)| start <= clock);
        let &(_, end, level) = runs.get(after.checked_sub(1)?)?;
        (clock < end).then_some(level)
    }
}

/// `level`, settled as far as `first` then `second` can settle it: known, or relative
/// to an item neither holds.
fn within(level: Level, first: &impl Lookup, second: &impl Lookup) -> Level {
    let mut plus = 0u8;
    let mut at = level;
    for _ in 0..MAX_HOPS {
        match at {
            Level::Known(depth) => return Level::Known(depth.saturating_add(plus)),
            Level::Disputed => return Level::Disputed,
            Level::After { of, plus: more } => {
                let Some(next) = first.find(of).or_else(|| second.find(of)) else {
                    return Level::After {
                        of,
                        plus: plus.saturating_add(more),
                    };
                };
                plus = plus.saturating_add(more);
                at = next;
            }
        }
    }
    Level::Disputed
}

/// What [`Levels::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Every shared type in it is within [`MAX_TYPE_DEPTH`].
    Admitted,
    /// A shared type would be too deep, or builds on disputed items: refused.
    TooDeep,
    /// A shared type builds on an item not taken in yet (its depth cannot be told):
    /// it may go in, as yrs keeps it pending until that item comes, and the item's
    /// update is judged with it (see [`Levels::unblocks_too_deep`]).
    Stalls(Id),
}

/// Shared types given to yrs before their depth could be told, at most; past this,
/// what yrs keeps pending is given up.
pub const MAX_STALLED_TYPES: usize = 65_536;

/// The levels of every item a document took in (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct Levels {
    runs: Runs,
    /// Shared types yrs keeps pending because they build on an item it lacks, each
    /// relative to that item, by its client and clock.
    stalled: HashMap<u64, BTreeMap<u32, Vec<Level>>>,
    stalled_count: usize,
}

impl Levels {
    /// Whether `shape`'s update may go into the document.
    pub(crate) fn admit(&self, shape: &Shape) -> Admission {
        let mut stalls = None;
        for &(_, level) in &shape.types {
            match self.settle(level, shape) {
                Ok(depth) if depth <= MAX_TYPE_DEPTH => {}
                Ok(_) | Err(Unsettled::Refused) => return Admission::TooDeep,
                Err(Unsettled::Missing(id)) => stalls = Some(id),
            }
        }
        stalls.map_or(Admission::Admitted, Admission::Stalls)
    }

    /// Whether `shape`'s update brings an item that a stalled shared type builds on,
    /// and so would let yrs integrate it, deeper than [`MAX_TYPE_DEPTH`] (or on
    /// disputed items). Then what yrs keeps pending must be given up first.
    pub(crate) fn unblocks_too_deep(&self, shape: &Shape) -> bool {
        if self.stalled_count == 0 {
            return false;
        }
        for (client, runs) in &shape.clients {
            let Some(stalled) = self.stalled.get(client) else {
                continue;
            };
            for &(start, end, _) in runs {
                for level in stalled.range(start..end).flat_map(|(_, levels)| levels) {
                    match self.settle(*level, shape) {
                        Ok(depth) if depth <= MAX_TYPE_DEPTH => {}
                        Ok(_) | Err(Unsettled::Refused) => return true,
                        Err(Unsettled::Missing(_)) => {}
                    }
                }
            }
        }
        false
    }

    /// Shared types yrs keeps pending whose depth cannot be told yet.
    pub(crate) fn stalled_types(&self) -> usize {
        self.stalled_count
    }

    /// Forgets the stalled types: yrs keeps nothing pending (or gave it up).
    pub(crate) fn clear_stalled(&mut self) {
        self.stalled.clear();
        self.stalled_count = 0;
    }

    fn stall(&mut self, level: Level) {
        if let Level::After { of, .. } = level {
            self.stalled
                .entry(of.0)
                .or_default()
                .entry(of.1)
                .or_default()
                .push(level);
            self.stalled_count += 1;
        }
    }

    /// The level of `level`, with `own` (the update it belongs to) looked in first.
    fn settle(&self, level: Level, own: &Shape) -> Result<u8, Unsettled> {
        match within(level, own, &self.runs) {
            Level::Known(depth) => Ok(depth),
            Level::After { of, .. } => Err(Unsettled::Missing(of)),
            Level::Disputed => Err(Unsettled::Refused),
        }
    }

    /// Records the levels of an admitted update's items (before yrs integrates it:
    /// what it builds on is recorded by then, so later updates can build on it).
    /// An item recorded before at another level counts at the deeper, or is disputed.
    /// Its shared types whose depth cannot be told yet are kept as stalled; stalled
    /// ones whose item it brings are settled (the caller checked
    /// [`Levels::unblocks_too_deep`] first) or wait on the next item of their chain.
    pub(crate) fn record(&mut self, shape: &Shape) {
        self.record_runs(shape);
        for &(_, level) in &shape.types {
            let level = within(level, shape, &self.runs);
            self.stall(level);
        }
        for (client, runs) in &shape.clients {
            let Some(stalled) = self.stalled.get_mut(client) else {
                continue;
            };
            let mut settled: Vec<Level> = Vec::new();
            for &(start, end, _) in runs {
                let clocks: Vec<u32> = stalled.range(start..end).map(|(&c, _)| c).collect();
                for clock in clocks {
                    settled.extend(stalled.remove(&clock).unwrap_or_default());
                }
            }
            if stalled.is_empty() {
                self.stalled.remove(client);
            }
            self.stalled_count -= settled.len();
            for level in settled {
                let level = within(level, &self.runs, &Runs::default());
                self.stall(level);
            }
        }
    }

    fn record_runs(&mut self, shape: &Shape) {
        for (client, runs) in &shape.clients {
            // Mostly an update continues what the document has of each client.
            let first = runs.first().map_or(0, |run| run.0);
            let appends = self.runs.clients.get(client).is_none_or(|recorded| {
                recorded
                    .last_key_value()
                    .is_none_or(|(_, &(end, _))| end <= first)
            });
            if appends {
                for &(start, end, level) in runs {
                    let level = within(level, shape, &self.runs);
                    self.runs.push_any(*client, start, end, level);
                }
                continue;
            }
            for &(start, end, level) in runs {
                self.record_run(shape, *client, start, end, level);
            }
        }
    }

    /// Records one run of `shape` over what may be recorded of it already.
    fn record_run(&mut self, shape: &Shape, client: u64, start: u32, end: u32, level: Level) {
        let level = within(level, shape, &self.runs);
        let before = self.runs.take_overlapping(client, start, end);
        if before.is_empty() {
            self.runs.push_any(client, start, end, level);
            return;
        }
        // Pieces: what the earlier runs hold outside this one, the overlaps
        // (agreeing or disputed), and the gaps between them.
        let mut at = start;
        for (run_start, run_end, old) in before {
            if run_start < start {
                self.runs.push_any(client, run_start, start, old);
            }
            if run_end > end {
                self.runs.push_any(client, end, run_end, old);
            }
            let (from, to) = (run_start.max(start), run_end.min(end));
            if from > at {
                self.runs.push_any(client, at, from, level);
            }
            let old = within(old, &self.runs, &Runs::default());
            self.runs.push_any(client, from, to, agree(old, level));
            at = to;
        }
        if at < end {
            self.runs.push_any(client, at, end, level);
        }
    }

    /// Forgets what was recorded past `known` (items yrs was given and then gave up,
    /// still pending when what they build on never came), and the stalled types.
    pub(crate) fn forget_from(&mut self, known: &yrs::StateVector) {
        for (client, runs) in self.runs.clients.iter_mut() {
            let from = known.get(&yrs::block::ClientID::new(*client));
            if let Some((&key, &(end, level))) = runs.range(..from).next_back()
                && end > from
            {
                runs.insert(key, (from, level));
            }
            runs.split_off(&from);
        }
        self.runs.clients.retain(|_, runs| !runs.is_empty());
        self.clear_stalled();
    }

    /// Runs recorded (each a few dozen bytes).
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// The level of items two updates describe as `a` and `b`: the deeper of two known
/// levels (the one yrs integrates is one of them, so nothing nested under it can be
/// deeper than admitted), the same if the same, else disputed.
fn agree(a: Level, b: Level) -> Level {
    match (a, b) {
        (Level::Known(a), Level::Known(b)) => Level::Known(a.max(b)),
        (a, b) if a == b => a,
        _ => Level::Disputed,
    }
}

impl Runs {
    /// [`Runs::push`] where the range may sit anywhere among the recorded runs (none
    /// overlapping it).
    fn push_any(&mut self, client: u64, start: u32, end: u32, level: Level) {
        if start < end {
            self.push(client, start, end, level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(runs: &[(u64, u32, u32, Level)], types: &[(Id, Level)]) -> Shape {
        let mut shape = Shape::default();
        for &(client, start, end, level) in runs {
            shape.push(client, start, end, level);
        }
        shape.types = types.to_vec();
        shape.finish(true).expect("local");
        shape
    }

    /// A chain of types, each update one level below the last, stops at the limit.
    #[test]
    fn nesting_across_updates_stops_at_the_limit() {
        let mut levels = Levels::default();
        levels.record(&shape(&[(1, 0, 1, Level::Known(1))], &[]));
        for depth in 2..=u32::from(MAX_TYPE_DEPTH) + 1 {
            let level = Level::After {
                of: (1, depth - 2),
                plus: 1,
            };
            let next = shape(&[(1, depth - 1, depth, level)], &[((1, depth - 1), level)]);
            let admitted = levels.admit(&next);
            if depth > u32::from(MAX_TYPE_DEPTH) {
                assert_eq!(admitted, Admission::TooDeep);
            } else {
                assert_eq!(admitted, Admission::Admitted, "at {depth}");
                levels.record(&next);
            }
        }
        assert_eq!(levels.runs(), 32);
    }

    /// A type on an item not taken in stalls (yrs keeps it pending); an update that
    /// brings that item is checked against it first, relative levels chaining
    /// through later updates.
    #[test]
    fn a_type_on_a_missing_item_stalls_until_the_item_comes() {
        let mut levels = Levels::default();
        let ty = Level::After {
            of: (2, 5),
            plus: 1,
        };
        let stalled = shape(&[(1, 0, 1, ty)], &[((1, 0), ty)]);
        assert_eq!(levels.admit(&stalled), Admission::Stalls((2, 5)));
        levels.record(&stalled);
        assert_eq!(levels.stalled_types(), 1);
        // Client 2's item comes, itself relative to client 3's: still stalled, on 3's.
        let two = shape(
            &[(
                2,
                0,
                10,
                Level::After {
                    of: (3, 0),
                    plus: 0,
                },
            )],
            &[],
        );
        assert!(!levels.unblocks_too_deep(&two));
        levels.record(&two);
        assert_eq!(levels.stalled_types(), 1);
        // Client 3's item at the limit would let the type in one too deep.
        let three = shape(&[(3, 0, 1, Level::Known(MAX_TYPE_DEPTH))], &[]);
        assert!(levels.unblocks_too_deep(&three));
        let shallow = shape(&[(3, 0, 1, Level::Known(3))], &[]);
        assert!(!levels.unblocks_too_deep(&shallow));
        levels.record(&shallow);
        assert_eq!(levels.stalled_types(), 0);
    }

    /// An item described twice at different levels counts at the deeper; described
    /// once known and once relative to a missing item, it is disputed.
    #[test]
    fn items_described_twice_differently_are_disputed() {
        let mut levels = Levels::default();
        levels.record(&shape(&[(1, 0, 10, Level::Known(1))], &[]));
        levels.record(&shape(&[(1, 5, 15, Level::Known(1))], &[]));
        levels.record(&shape(&[(1, 8, 9, Level::Known(30))], &[]));
        let on = |clock| {
            let level = Level::After {
                of: (1, clock),
                plus: 1,
            };
            shape(&[(9, 0, 1, level)], &[((9, 0), level)])
        };
        assert_eq!(levels.admit(&on(3)), Admission::Admitted);
        assert_eq!(levels.admit(&on(12)), Admission::Admitted);
        assert_eq!(levels.admit(&on(8)), Admission::Admitted);
        levels.record(&shape(&[(1, 8, 9, Level::Known(32))], &[]));
        assert_eq!(levels.admit(&on(8)), Admission::TooDeep);
        levels.record(&shape(
            &[(
                1,
                2,
                3,
                Level::After {
                    of: (5, 5),
                    plus: 0,
                },
            )],
            &[],
        ));
        assert_eq!(levels.admit(&on(2)), Admission::TooDeep);
        assert_eq!(levels.admit(&on(3)), Admission::Admitted);
        assert!(levels.runs.find((1, 14)).is_some() && levels.runs.find((1, 15)).is_none());
    }

    #[test]
    fn what_yrs_gave_up_is_forgotten() {
        let mut levels = Levels::default();
        levels.record(&shape(
            &[(1, 0, 10, Level::Known(1)), (2, 0, 4, Level::Known(2))],
            &[],
        ));
        let mut known = yrs::StateVector::default();
        known.set_max(yrs::block::ClientID::new(1), 6);
        levels.forget_from(&known);
        let has = |id| levels.runs.find(id).is_some();
        assert!(has((1, 5)) && !has((1, 6)) && !has((2, 0)));
    }
}
