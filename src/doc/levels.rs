//! How deeply each item of a document sits in nested shared types, known across
//! updates.
//!
//! yrs deletes a shared type by recursion into the types nested in it (and frees and
//! collects them the same way), so a chain of types nested some thousands deep
//! overflows the stack the first time its top is deleted: the process aborts (a tab
//! in the browser), whoever deletes it. [`check`](super::check) bounds the nesting
//! within one update, but a peer can nest each update's types in the last's, so the
//! bound must hold for the document.
//!
//! yrs 0.28 does not say where an item sits (its block store is private), so this
//! module keeps it: [`Levels`] maps every item a document took in (remote ones as yrs
//! takes them, local ones as they are committed) to its level, by clock range per
//! client. An item's level follows from its update alone, as yrs places it: a root
//! type's items are at level 1, an item under a named parent one below that parent, an
//! item with origins beside them (yrs takes the left origin's parent, or the right's
//! when the left is a collected block, sent as one or collected with its parent; the
//! deeper of the two is counted, and for an honest item they are the same; when
//! neither can be told yet, the pair is checked when they come). [`check`](super::check) works out each update's
//! [`Shape`] as it reads it, relative to other updates' items where it must, and
//! [`Levels::admit`] settles it against what came before:
//!
//! - a shared type deeper than [`MAX_TYPE_DEPTH`] is refused, with its update;
//! - one whose level cannot be told yet (it builds on an item not in yet, as an update
//!   from a third peer may, or a piece of a catch-up on a later piece) goes to yrs,
//!   which keeps it pending until that item comes (yrs integrates per client and
//!   block: holding whole updates back here deadlocks pieces that build on each
//!   other), if it sits at most [`MAX_TYPE_DEPTH`] below that item. It is kept as
//!   stalled, and the update that brings the item is refused if it would let the type
//!   in deeper than [`MAX_SETTLED_DEPTH`], or still relative and more than
//!   [`MAX_TYPE_DEPTH`] below the next missing item (a chain of such updates sent in
//!   reverse). So no shared type ever sits deeper than [`MAX_SETTLED_DEPTH`];
//! - an update that describes items the document has already recorded otherwise than
//!   it recorded them (an honest author never does: a peer lying about history, so
//!   that a type it nests there looks shallower than it is) is refused.
//!
//! Each level is stored once per run of items of one client at the same level (a
//! client's items mostly are), so the index is a small fraction of the document.

use std::collections::BTreeMap;

use bevy::log::warn;
use bevy::platform::collections::HashMap;

/// Shared types nested in one another, at most: a new type deeper than this is refused.
/// Game state nests a few levels (the entity document four); yrs' recursion costs far
/// below any thread's stack at this depth.
pub const MAX_TYPE_DEPTH: u8 = 32;

/// The deepest a shared type can end up in a document: one whose depth could not be
/// told when it came ([`MAX_TYPE_DEPTH`] at most below an item not in yet), under an
/// item one below the limit.
pub const MAX_SETTLED_DEPTH: u8 = 2 * MAX_TYPE_DEPTH + 1;

/// Shared types given to yrs before their depth could be told, at most at once;
/// past this, what yrs keeps pending is given up.
pub const MAX_STALLED_TYPES: usize = 65_536;

/// An item's id: its client and clock.
pub(crate) type Id = (u64, u32);

/// Where an item sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// This many shared types deep (a root type's items are at 1); 0 for a collected
    /// (GC) block, which nothing can nest in.
    Known(u8),
    /// As deep as item `of` plus `plus` (an item's level is its parent's plus one, or
    /// its origin's), and at least `floor`.
    After { of: Id, plus: u8, floor: u8 },
    /// Not to be nested in (two updates described these items differently, or finding
    /// their level took more than its budget).
    Disputed,
    /// A collected (GC) block that yrs keeps pending, or one read in an update: what
    /// builds on it counts it as an item not in yet, because yrs may still take
    /// another description of its clocks (an item, a type) that comes first. Recorded
    /// as `Known(0)` once yrs has integrated it.
    Collected,
}

impl Level {
    pub(crate) fn after(of: Id, plus: u8) -> Self {
        Level::After { of, plus, floor: 0 }
    }

    /// This level as far as `settled` tells it: known, disputed, or relative to the
    /// one missing item it builds on (so chains of relative levels do not grow).
    fn collapsed(settled: Settled) -> Level {
        match settled {
            Settled::Known(depth) => Level::Known(depth),
            Settled::Disputed => Level::Disputed,
            Settled::Relative {
                known,
                missing,
                plus,
            } => Level::After {
                of: missing,
                plus,
                floor: known,
            },
        }
    }
}

/// A level settled as far as what is known allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Known(u8),
    /// At least `known`, and `plus` below item `missing`, not in yet.
    Relative {
        known: u8,
        missing: Id,
        plus: u8,
    },
    Disputed,
}

/// Where levels are looked up.
pub(crate) trait Lookup {
    fn find(&self, id: Id) -> Option<Level>;
}

/// Item `id`'s level: in `first` (an update's own shape), unless that has nothing
/// or a collected block there, then in `second` (what the document recorded). yrs
/// drops an update's collected block for clocks it already holds, so a type recorded
/// there is what anything nested at `id` goes into.
fn lookup(id: Id, first: &impl Lookup, second: &impl Lookup) -> Option<Level> {
    let placed = |level: &Level| *level != Level::Collected;
    let own = first.find(id);
    if own.is_some_and(|level| placed(&level)) {
        return own;
    }
    let recorded = second.find(id);
    if recorded.is_some_and(|level| placed(&level)) {
        return recorded;
    }
    own.or(recorded)
}

/// Settles `level` through `first` then `second`, spending at most `budget` lookups.
fn settle(level: Level, first: &impl Lookup, second: &impl Lookup, budget: &mut u32) -> Settled {
    let mut known = 0u8;
    let mut plus = 0u8;
    // (A collected block settles at 0 itself; looked up, it is not placed yet.)
    let mut at = match level {
        Level::Collected => Level::Known(0),
        other => other,
    };
    loop {
        match at {
            Level::Known(depth) => return Settled::Known(known.max(depth.saturating_add(plus))),
            Level::Disputed => return Settled::Disputed,
            // (Not reached: `at` starts settled and lookups stop at one.)
            Level::Collected => return Settled::Known(known.max(plus)),
            Level::After {
                of,
                plus: more,
                floor,
            } => {
                known = known.max(floor.saturating_add(plus));
                plus = plus.saturating_add(more);
                if *budget == 0 {
                    return Settled::Disputed;
                }
                *budget -= 1;
                match lookup(of, first, second) {
                    Some(Level::Collected) | None => {
                        return Settled::Relative {
                            known,
                            missing: of,
                            plus,
                        };
                    }
                    Some(next) => at = next,
                }
            }
        }
    }
}

/// What is checked again when an item it builds on comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    /// A shared type whose depth could not be told.
    Type(Level),
    /// An item with both origins, neither of whose levels could be told (`item`, from
    /// the left one, with what of the right one was known), and the right origin's
    /// level. yrs places the item beside the right origin when the left one is a
    /// collected block (or was collected with its parent): the right must not sit
    /// deeper than the level counted for the item.
    Pair { item: Level, right: Level },
}

/// What checking a [`Watch`] found.
enum Check {
    /// Within the limits, for good.
    Fits,
    /// Within the limits so far; to check again when this item comes.
    Waits(Id),
    /// Too deep (or disputed): refused.
    TooDeep,
}

impl Watch {
    /// Checked through `first` then `second`: with the limits of a new update's types
    /// (`MAX_TYPE_DEPTH`) or, `settled`, of one whose depth could not be told when it
    /// came (`MAX_SETTLED_DEPTH` once known, and never more than `MAX_TYPE_DEPTH` below a
    /// missing item).
    fn check(
        self,
        first: &impl Lookup,
        second: &impl Lookup,
        budget: &mut u32,
        settled: bool,
    ) -> Check {
        let limit = if settled {
            MAX_SETTLED_DEPTH
        } else {
            MAX_TYPE_DEPTH
        };
        match self {
            Watch::Type(level) => match settle(level, first, second, budget) {
                Settled::Known(depth) if depth <= limit => Check::Fits,
                Settled::Relative {
                    known,
                    missing,
                    plus,
                } if known <= limit && plus <= MAX_TYPE_DEPTH => Check::Waits(missing),
                _ => Check::TooDeep,
            },
            Watch::Pair { item, right } => {
                let item = settle(item, first, second, budget);
                match (item, settle(right, first, second, budget)) {
                    (Settled::Disputed, _) | (_, Settled::Disputed) => Check::TooDeep,
                    // Counted through a left origin that is a collected block not placed
                    // yet: if yrs integrates it as one, it places the item beside the
                    // right origin, deeper than counted, in the same apply that drains
                    // it (whichever update brings what it waits for), too late to
                    // check. Honest items beside a collected block are collected too.
                    (Settled::Relative { missing, .. }, _)
                        if lookup(missing, first, second) == Some(Level::Collected) =>
                    {
                        Check::TooDeep
                    }
                    (Settled::Known(item), Settled::Known(right)) if right > item => Check::TooDeep,
                    (Settled::Known(_), Settled::Known(_)) => Check::Fits,
                    (Settled::Relative { missing, .. }, _)
                    | (_, Settled::Relative { missing, .. }) => Check::Waits(missing),
                }
            }
        }
    }
}

/// Lookups a settle may spend per level it settles (honest levels take one or two),
/// and besides.
const HOPS_PER_LEVEL: u32 = 8;
const HOPS_SLACK: u32 = 4096;

/// Runs of items at one level: (client, start clock) to (end clock, level). One map
/// for all clients (a map per client cost a tree node, some 450 bytes, for each client
/// of one block: 60 times the bytes a hostile update spends on it).
#[derive(Debug, Default, Clone)]
pub(crate) struct Runs {
    runs: BTreeMap<(u64, u32), (u32, Level)>,
}

impl Lookup for Runs {
    fn find(&self, (client, clock): Id) -> Option<Level> {
        let (&(c, _), &(end, level)) = self.runs.range(..=(client, clock)).next_back()?;
        (c == client && clock < end).then_some(level)
    }
}

impl Runs {
    fn len(&self) -> usize {
        self.runs.len()
    }

    /// Records `level` for items `start..end` of `client`, none of which is recorded:
    /// joined to the run before when it continues it at the same level.
    fn push(&mut self, client: u64, start: u32, end: u32, level: Level) {
        if start >= end {
            return;
        }
        if let Some((&(c, _), last)) = self.runs.range_mut(..(client, start)).next_back()
            && c == client
            && last.0 == start
            && last.1 == level
        {
            last.0 = end;
            return;
        }
        self.runs.insert((client, start), (end, level));
    }

    /// The end of the run of `client` that starts at `start`.
    fn end_of(&self, client: u64, start: u32) -> Option<u32> {
        self.runs.get(&(client, start)).map(|run| run.0)
    }

    /// Recorded runs of `client` that overlap `start..end`: (start, end, level), in
    /// clock order, read lazily.
    fn overlapping(
        &self,
        client: u64,
        start: u32,
        end: u32,
    ) -> impl Iterator<Item = (u32, u32, Level)> + '_ {
        let before = self
            .runs
            .range(..(client, start))
            .next_back()
            .filter(|((c, _), (run_end, _))| *c == client && *run_end > start);
        before
            .into_iter()
            .chain(self.runs.range((client, start)..(client, end.max(start))))
            .map(|(&(_, run_start), &(run_end, level))| (run_start, run_end, level))
    }

    /// Forgets what `client` has recorded from `from` on.
    fn truncate(&mut self, client: u64, from: u32) {
        if let Some((&key, &(end, level))) = self.runs.range(..(client, from)).next_back()
            && key.0 == client
            && end > from
        {
            self.runs.insert(key, (from, level));
        }
        let after: Vec<(u64, u32)> = self
            .runs
            .range((client, from)..=(client, u32::MAX))
            .map(|(&key, _)| key)
            .collect();
        for key in after {
            self.runs.remove(&key);
        }
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
    /// The update's shared types: id and level.
    pub(crate) types: Vec<(Id, Level)>,
    /// Items with both origins neither of whose levels could be told when read.
    pairs: Vec<Watch>,
    /// Lookups left for reading it.
    budget: u32,
    /// The root types its items name as parents, each once (see [`Shape::roots_only`]),
    /// and whether there were more than [`MAX_ROOTS_KEPT`].
    roots: Vec<Box<str>>,
    many_roots: bool,
}

/// Root type names a [`Shape`] keeps (an honest update names a few).
const MAX_ROOTS_KEPT: usize = 16;

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

/// Nothing: for settling against one place only.
struct Nowhere;

impl Lookup for Nowhere {
    fn find(&self, _: Id) -> Option<Level> {
        None
    }
}

impl Shape {
    /// An empty shape for an update of `bytes` bytes (its lookup budget follows).
    pub(crate) fn for_bytes(bytes: usize) -> Self {
        Self {
            budget: u32::try_from(bytes)
                .unwrap_or(u32::MAX)
                .saturating_mul(HOPS_PER_LEVEL)
                .saturating_add(HOPS_SLACK),
            ..Self::default()
        }
    }

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

    /// `level` settled against the items read so far: known, or as it was.
    pub(crate) fn settle(&mut self, level: Level) -> Level {
        if let Level::Known(_) | Level::Collected = level {
            return level;
        }
        let mut budget = self.budget;
        let settled = settle(level, self, &Nowhere, &mut budget);
        self.budget = budget;
        Level::collapsed(settled)
    }

    /// Notes a shared type.
    pub(crate) fn push_type(&mut self, id: Id, level: Level) {
        self.types.push((id, level));
    }

    /// The level of an item with both origins, each settled as far as the items read
    /// so far allow: the deeper of the two. yrs takes the left origin's parent, or the
    /// right one's when the left is a collected block (here, or later, or collected
    /// with its parent), and honest origins are siblings at one level. When neither
    /// can be told, the left counts and the pair is checked once both can.
    pub(crate) fn beside(&mut self, left: Level, right: Level) -> Level {
        match (left, right) {
            // (Settled origins are never collected blocks themselves: looked up, those
            // are items not placed yet.)
            (Level::Disputed | Level::Collected, _) | (_, Level::Disputed | Level::Collected) => {
                Level::Disputed
            }
            (Level::Known(a), Level::Known(b)) => Level::Known(a.max(b)),
            (Level::Known(known), Level::After { of, plus, floor })
            | (Level::After { of, plus, floor }, Level::Known(known)) => Level::After {
                of,
                plus,
                floor: floor.max(known),
            },
            (Level::After { of, plus, floor }, Level::After { floor: other, .. }) => {
                let item = Level::After {
                    of,
                    plus,
                    floor: floor.max(other),
                };
                if right != left {
                    self.pairs.push(Watch::Pair { item, right });
                }
                item
            }
        }
    }

    /// Notes an item whose parent is root type `name`.
    pub(crate) fn push_root(&mut self, name: &str) {
        if self.many_roots || self.roots.iter().any(|root| &**root == name) {
            return;
        }
        if self.roots.len() == MAX_ROOTS_KEPT {
            self.many_roots = true;
            return;
        }
        self.roots.push(name.into());
    }

    /// Whether every item of the update whose parent is a root type is in `root`.
    pub(crate) fn roots_only(&self, root: &str) -> bool {
        !self.many_roots && self.roots.iter().all(|name| &**name == root)
    }

    /// The clients whose blocks the update carries.
    pub(crate) fn clients(&self) -> impl Iterator<Item = u64> + '_ {
        self.clients.iter().map(|(client, _)| *client)
    }

    fn runs(&self) -> usize {
        self.clients.iter().map(|(_, runs)| runs.len()).sum()
    }

    /// Each client's items in it, and where they end.
    pub(crate) fn ends(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.clients
            .iter()
            .filter_map(|(client, runs)| Some((*client, runs.last()?.1)))
    }

    /// Settles relative levels that point into this update itself (an item can
    /// build on a client read later), once all of it is read. A shared type found too
    /// deep, or relative and more than [`MAX_TYPE_DEPTH`] below what it builds on, is
    /// refused here, and so is an update whose levels take more than their budget to
    /// find (unless `local`: this peer's own, recorded as they are).
    pub(crate) fn finish(&mut self, local: bool) -> Result<(), ()> {
        let mut budget = self.budget;
        let mut relative: Vec<(usize, usize, Level)> = Vec::new();
        for (c, (_, runs)) in self.clients.iter().enumerate() {
            for (r, &(_, _, level)) in runs.iter().enumerate() {
                if let Level::After { .. } = level {
                    let settled = Level::collapsed(settle(level, self, &Nowhere, &mut budget));
                    if settled != level {
                        relative.push((c, r, settled));
                    }
                }
            }
        }
        for (c, r, level) in relative {
            self.clients[c].1[r].2 = level;
        }
        let mut types = Vec::with_capacity(self.types.len());
        for &(id, level) in &self.types {
            let fits = match settle(level, self, &Nowhere, &mut budget) {
                Settled::Known(depth) => depth <= MAX_TYPE_DEPTH,
                Settled::Relative { known, plus, .. } => {
                    types.push((id, level));
                    known <= MAX_TYPE_DEPTH && plus <= MAX_TYPE_DEPTH
                }
                Settled::Disputed => false,
            };
            if !fits && !local {
                return Err(());
            }
        }
        // Those known are checked: only the relative ones are for `Levels::admit`.
        self.types = types;
        let mut pairs = Vec::new();
        for &pair in &self.pairs {
            match pair.check(self, &Nowhere, &mut budget, false) {
                Check::Fits => {}
                Check::Waits(_) => pairs.push(pair),
                Check::TooDeep if local => {}
                Check::TooDeep => return Err(()),
            }
        }
        self.pairs = pairs;
        if budget == 0 && !local {
            return Err(());
        }
        self.budget = budget;
        Ok(())
    }

    fn budget_for_settling(&self) -> u32 {
        u32::try_from(self.types.len() + self.runs() + 2 * self.pairs.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(HOPS_PER_LEVEL)
            .saturating_add(HOPS_SLACK)
    }
}

/// What [`Levels::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Every shared type in it is within [`MAX_TYPE_DEPTH`].
    Admitted,
    /// A shared type would be too deep, or it describes recorded items otherwise, or
    /// it would let a stalled type in too deep: refused.
    TooDeep,
    /// A shared type builds on an item not in yet (its depth cannot be told): it goes
    /// in, yrs keeps it pending until that item comes, and it is watched as stalled.
    Stalls,
}

/// The levels of every item a document took in (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct Levels {
    runs: Runs,
    /// What yrs keeps pending because it builds on an item it lacks, to check when that
    /// item comes: by the item's client and clock.
    stalled: HashMap<u64, BTreeMap<u32, Vec<Watch>>>,
    stalled_count: usize,
    /// Collected blocks recorded while yrs kept them pending: client and first clock.
    collecting: HashMap<u64, std::collections::BTreeSet<u32>>,
    /// Collected blocks looked at to tell whether yrs has placed them (a count, for
    /// the tests of what that costs).
    collected_visits: u64,
}

impl Levels {
    /// Whether `shape`'s update may go into the document.
    pub(crate) fn admit(&self, shape: &Shape) -> Admission {
        let mut budget = shape.budget_for_settling();
        let mut stalls = false;
        let watches = shape.types.iter().map(|&(_, level)| Watch::Type(level));
        for watch in watches.chain(shape.pairs.iter().copied()) {
            match watch.check(shape, &self.runs, &mut budget, false) {
                Check::Fits => {}
                Check::Waits(_) => stalls |= matches!(watch, Watch::Type(_)),
                Check::TooDeep => return Admission::TooDeep,
            }
        }
        for (client, runs) in &shape.clients {
            for &(start, end, level) in runs {
                // What it says of items recorded already must be what was recorded
                // (a collected block, level 0, agrees with any: one peer may send as
                // collected what another kept). Each recorded run compared is charged.
                for (_, _, recorded) in self.runs.overlapping(*client, start, end) {
                    if budget == 0 {
                        return Admission::TooDeep;
                    }
                    budget -= 1;
                    let said = settle(level, shape, &self.runs, &mut budget);
                    let was = settle(recorded, shape, &self.runs, &mut budget);
                    // A collected block agrees with any description: described as one
                    // here (another peer collected what this one holds), or recorded as
                    // one (placed at 0, or pending). An item that merely sits at 0,
                    // beside a collected block, is no collected block: described so
                    // over a recorded type, yrs keeps the type and what nests in the
                    // description goes into it; recorded so (as not to be nested in),
                    // it agrees only with a description at 0.
                    let collected = level == Level::Collected
                        || matches!(recorded, Level::Known(0) | Level::Collected)
                        || (said == Settled::Known(0) && was == Settled::Disputed);
                    if (said != was && !collected) || said == Settled::Disputed {
                        return Admission::TooDeep;
                    }
                }
                // What waits for an item this update brings.
                let Some(stalled) = self.stalled.get(client) else {
                    continue;
                };
                for watch in stalled.range(start..end).flat_map(|(_, watches)| watches) {
                    if let Check::TooDeep = watch.check(shape, &self.runs, &mut budget, true) {
                        return Admission::TooDeep;
                    }
                }
            }
        }
        if stalls {
            Admission::Stalls
        } else {
            Admission::Admitted
        }
    }

    /// Records the levels of an admitted update's items that yrs took (integrated or
    /// kept pending): of each client, those before `taken(client)`. Its shared types
    /// whose depth cannot be told yet are kept as stalled; stalled ones whose item it
    /// brings are settled, or wait on the next item they build on. `false` if that
    /// took more than its budget: then stalled types may have been lost track of, and
    /// what yrs keeps pending must be given up.
    pub(crate) fn record(
        &mut self,
        shape: &Shape,
        integrated: impl Fn(u64) -> u32,
        taken: impl Fn(u64) -> u32,
    ) -> bool {
        let mut budget = shape.budget_for_settling().saturating_add(
            u32::try_from(self.stalled_count)
                .unwrap_or(u32::MAX)
                .saturating_mul(HOPS_PER_LEVEL),
        );
        for (client, runs) in &shape.clients {
            let (limit, placed) = (taken(*client), integrated(*client));
            for &(start, end, level) in runs {
                let end = end.min(limit);
                if start >= end {
                    continue;
                }
                if level == Level::Collected {
                    // At 0 what yrs integrated; what it keeps pending, not placed yet.
                    let split = placed.clamp(start, end);
                    self.record_run(*client, start, split, Level::Known(0));
                    if split < end {
                        self.record_run(*client, split, end, Level::Collected);
                        self.collecting.entry(*client).or_default().insert(split);
                    }
                    continue;
                }
                // (Out of budget, it is kept as it was: correct, only longer to read.)
                let level = match settle(level, shape, &self.runs, &mut budget) {
                    Settled::Disputed if budget == 0 => level,
                    // An item at 0 sits beside a collected block: where yrs puts it
                    // depends on its other origin, so nothing is to nest in it (and
                    // `Known(0)` stays what it says: a collected block placed).
                    Settled::Known(0) => Level::Disputed,
                    settled => Level::collapsed(settled),
                };
                self.record_run(*client, start, end, level);
            }
        }
        let mut on_track = true;
        // Its types and pairs that cannot be told yet wait for the item they build on.
        let types = shape
            .types
            .iter()
            .filter(|&&((client, clock), _)| clock < taken(client))
            .map(|&(_, level)| Watch::Type(level));
        let watches: Vec<Watch> = types.chain(shape.pairs.iter().copied()).collect();
        on_track &= self.watch(watches, &mut budget);
        if self.stalled_count == 0 {
            return on_track;
        }
        // Those that waited for an item it brings: checked at admission, now waiting
        // for the next item they build on, or done with.
        for (client, runs) in &shape.clients {
            let Some(stalled) = self.stalled.get_mut(client) else {
                continue;
            };
            let mut brought: Vec<Watch> = Vec::new();
            for &(start, end, _) in runs {
                let clocks: Vec<u32> = stalled.range(start..end).map(|(&c, _)| c).collect();
                for clock in clocks {
                    brought.extend(stalled.remove(&clock).unwrap_or_default());
                }
            }
            if stalled.is_empty() {
                self.stalled.remove(client);
            }
            self.stalled_count -= brought.len();
            on_track &= self.watch(brought, &mut budget);
        }
        on_track
    }

    /// Files each of `watches` under the item it waits for; `false` if that took more
    /// than `budget`.
    fn watch(&mut self, watches: Vec<Watch>, budget: &mut u32) -> bool {
        let mut on_track = true;
        for watch in watches {
            match watch.check(&self.runs, &Nowhere, budget, true) {
                Check::Waits(missing) => self.stall(missing, watch),
                Check::TooDeep if *budget == 0 => on_track = false,
                // Admission checked it with the same records: not expected.
                Check::TooDeep => warn!("a shared type went in past the depth limit: {watch:?}"),
                Check::Fits => {}
            }
        }
        on_track
    }

    /// Records a run over what may be recorded of it already (with the same levels:
    /// [`Levels::admit`] refuses an update that says otherwise), except where a
    /// collected block was recorded: described as anything else, the new level
    /// counts. A collected block kept pending in yrs can still be taken over by an item
    /// of the same clocks that comes first (or be integrated: then it is at 0); one
    /// yrs integrated stays collected, and counting its clocks deeper only over-counts
    /// what yrs collects anyway.
    fn record_run(&mut self, client: u64, start: u32, end: u32, level: Level) {
        let mut at = start;
        let overlapping: Vec<(u32, u32, Level)> =
            self.runs.overlapping(client, start, end).collect();
        for (run_start, run_end, recorded) in overlapping {
            self.runs.push(client, at, run_start.max(at), level);
            let collected = |level| matches!(level, Level::Known(0) | Level::Collected);
            let replaced = match recorded {
                Level::Collected => level != Level::Collected,
                Level::Known(0) => !collected(level),
                _ => false,
            };
            if start < end && replaced {
                self.runs.runs.remove(&(client, run_start));
                let (from, to) = (run_start.max(start), run_end.min(end));
                self.runs.push(client, run_start, from, recorded);
                self.runs.push(client, to, run_end, recorded);
                self.runs.push(client, from, to, level);
            }
            at = at.max(run_end);
        }
        self.runs.push(client, at, end, level);
    }

    fn stall(&mut self, missing: Id, watch: Watch) {
        self.stalled
            .entry(missing.0)
            .or_default()
            .entry(missing.1)
            .or_default()
            .push(watch);
        self.stalled_count += 1;
    }

    /// Records at 0 the collected blocks yrs kept pending and has now integrated
    /// (before `integrated(client)`), whichever update brought what they waited for.
    pub(crate) fn place_collected(&mut self, integrated: impl Fn(u64) -> u32) {
        // Per client, only the blocks below what yrs has integrated of it: one look for
        // a client none of whose blocks went in.
        let clients: Vec<u64> = self.collecting.keys().copied().collect();
        for client in clients {
            let placed = integrated(client);
            self.collected_visits += 1;
            let Some(starts) = self.collecting.get_mut(&client) else {
                continue;
            };
            if starts.first().is_none_or(|&first| first >= placed) {
                continue;
            }
            let rest = starts.split_off(&placed);
            let taken = std::mem::replace(starts, rest);
            self.collected_visits += taken.len() as u64;
            for start in taken {
                let Some(Level::Collected) = self.runs.find((client, start)) else {
                    continue;
                };
                let end = self.runs.end_of(client, start).unwrap_or(start);
                self.record_run(client, start, end.min(placed), Level::Known(0));
                if placed < end {
                    self.collecting.entry(client).or_default().insert(placed);
                }
            }
            if self
                .collecting
                .get(&client)
                .is_some_and(|starts| starts.is_empty())
            {
                self.collecting.remove(&client);
            }
        }
    }

    /// Collected blocks looked at so far to tell whether yrs placed them.
    pub(crate) fn collected_visits(&self) -> u64 {
        self.collected_visits
    }

    /// Shared types yrs keeps pending whose depth cannot be told yet.
    pub(crate) fn stalled_types(&self) -> usize {
        self.stalled_count
    }

    /// Forgets the stalled types: yrs keeps nothing pending.
    pub(crate) fn clear_stalled(&mut self) {
        self.stalled.clear();
        self.stalled_count = 0;
    }

    /// Forgets what was recorded past `known` (items yrs was given and then gave up,
    /// still pending when what they build on never came), and the stalled types.
    pub(crate) fn forget_from(&mut self, known: &yrs::StateVector) {
        let mut clients: Vec<u64> = self.runs.runs.keys().map(|&(client, _)| client).collect();
        clients.dedup();
        for client in clients {
            self.runs
                .truncate(client, known.get(&yrs::block::ClientID::new(client)));
        }
        self.clear_stalled();
    }

    /// Runs recorded (each a few dozen bytes).
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(runs: &[(u64, u32, u32, Level)], types: &[(Id, Level)]) -> Shape {
        let mut shape = Shape::for_bytes(64);
        for &(client, start, end, level) in runs {
            shape.push(client, start, end, level);
        }
        shape.types = types.to_vec();
        shape.finish(true).expect("local");
        shape
    }

    fn record(levels: &mut Levels, shape: &Shape) {
        assert!(levels.record(shape, |_| u32::MAX, |_| u32::MAX));
    }

    /// A chain of types, each update one level below the last, stops at the limit.
    #[test]
    fn nesting_across_updates_stops_at_the_limit() {
        let mut levels = Levels::default();
        record(&mut levels, &shape(&[(1, 0, 1, Level::Known(1))], &[]));
        for depth in 2..=u32::from(MAX_TYPE_DEPTH) + 1 {
            let level = Level::after((1, depth - 2), 1);
            let next = shape(&[(1, depth - 1, depth, level)], &[((1, depth - 1), level)]);
            let admitted = levels.admit(&next);
            if depth > u32::from(MAX_TYPE_DEPTH) {
                assert_eq!(admitted, Admission::TooDeep);
            } else {
                assert_eq!(admitted, Admission::Admitted, "at {depth}");
                record(&mut levels, &next);
            }
        }
        assert_eq!(levels.runs(), 32);
    }

    /// A type on an item not in yet stalls (yrs keeps it pending); the update that
    /// brings that item is checked against it, relative levels chaining through later
    /// updates.
    #[test]
    fn a_type_on_a_missing_item_stalls_until_the_item_comes() {
        let mut levels = Levels::default();
        let ty = Level::after((2, 5), 1);
        let stalled = shape(&[(1, 0, 1, ty)], &[((1, 0), ty)]);
        assert_eq!(levels.admit(&stalled), Admission::Stalls);
        record(&mut levels, &stalled);
        assert_eq!(levels.stalled_types(), 1);
        // Client 2's item comes, itself relative to client 3's: still stalled, on 3's.
        let two = shape(&[(2, 0, 10, Level::after((3, 0), 0))], &[]);
        assert_eq!(levels.admit(&two), Admission::Admitted);
        record(&mut levels, &two);
        assert_eq!(levels.stalled_types(), 1);
        // Client 3's item past the settled limit would let the type in too deep.
        let three = shape(&[(3, 0, 1, Level::Known(MAX_SETTLED_DEPTH))], &[]);
        assert_eq!(levels.admit(&three), Admission::TooDeep);
        let shallow = shape(&[(3, 0, 1, Level::Known(3))], &[]);
        assert_eq!(levels.admit(&shallow), Admission::Admitted);
        record(&mut levels, &shallow);
        assert_eq!(levels.stalled_types(), 0);
    }

    /// Types relative to a missing item, each update relative to the next, sent in
    /// reverse: the first that would make a stalled type more than the limit below a
    /// missing item is refused.
    #[test]
    fn a_reversed_chain_of_stalled_types_is_cut() {
        let mut levels = Levels::default();
        let on = |client: u64| {
            let level = Level::after((client - 1, 0), MAX_TYPE_DEPTH);
            shape(&[(client, 0, 1, level)], &[((client, 0), level)])
        };
        assert_eq!(levels.admit(&on(9)), Admission::Stalls);
        record(&mut levels, &on(9));
        assert_eq!(levels.admit(&on(8)), Admission::TooDeep);
        let over = Level::after((1, 0), MAX_TYPE_DEPTH + 1);
        assert_eq!(
            levels.admit(&shape(&[(5, 0, 1, over)], &[((5, 0), over)])),
            Admission::TooDeep
        );
    }

    /// An item with both origins counts at the deeper one (yrs places it beside the
    /// right one when the left is a collected block, in this update or a later one, or
    /// was collected with its parent): a type nested under it past the limit is refused.
    #[test]
    fn an_item_counts_at_its_deeper_origin() {
        let mut levels = Levels::default();
        record(
            &mut levels,
            &shape(
                &[
                    (1, 0, 1, Level::Known(2)),
                    (1, 1, 2, Level::Known(MAX_TYPE_DEPTH)),
                ],
                &[],
            ),
        );
        // Both origins known (from the document): the right one, deeper, counts.
        let mut update = Shape::for_bytes(64);
        let left = update.settle(Level::after((1, 0), 0));
        let right = update.settle(Level::after((1, 1), 0));
        let item = update.beside(left, right);
        update.push(2, 0, 1, item);
        let nested = Level::after((2, 0), 1);
        update.push(2, 1, 2, nested);
        update.push_type((2, 1), nested);
        update.finish(false).unwrap();
        assert_eq!(levels.admit(&update), Admission::TooDeep);
        // The left origin not in yet (it may come as a collected block), the right one
        // at the limit: the item counts at least at the right's level.
        let mut update = Shape::for_bytes(64);
        let left = update.settle(Level::after((7, 0), 0));
        let right = update.settle(Level::Known(MAX_TYPE_DEPTH));
        let item = update.beside(left, right);
        update.push(3, 0, 1, item);
        update.push(3, 1, 2, Level::after((3, 0), 1));
        update.push_type((3, 1), Level::after((3, 0), 1));
        assert_eq!(update.finish(false), Err(()));
    }

    /// Neither origin known: the pair waits, and the update that brings both is
    /// refused if the right one turns out deeper than the item was counted.
    #[test]
    fn a_pair_of_unknown_origins_is_checked_when_both_come() {
        let mut levels = Levels::default();
        let mut update = Shape::for_bytes(64);
        let left = update.settle(Level::after((7, 0), 0));
        let right = update.settle(Level::after((8, 0), 0));
        let item = update.beside(left, right);
        update.push(3, 0, 1, item);
        update.finish(false).unwrap();
        assert_eq!(levels.admit(&update), Admission::Admitted);
        record(&mut levels, &update);
        assert_eq!(levels.stalled_types(), 1);
        // The left comes as a collected block; the right, deep, with it.
        let deep = shape(
            &[(7, 0, 1, Level::Known(0)), (8, 0, 1, Level::Known(9))],
            &[],
        );
        assert_eq!(levels.admit(&deep), Admission::TooDeep);
        let alike = shape(
            &[(7, 0, 1, Level::Known(3)), (8, 0, 1, Level::Known(3))],
            &[],
        );
        assert_eq!(levels.admit(&alike), Admission::Admitted);
        record(&mut levels, &alike);
        assert_eq!(levels.stalled_types(), 0);
    }

    /// An update that describes recorded items otherwise (to make a type it nests
    /// there look shallow) is refused; described alike (an honest duplicate), it goes.
    #[test]
    fn describing_recorded_items_otherwise_is_refused() {
        let mut levels = Levels::default();
        record(&mut levels, &shape(&[(1, 0, 10, Level::Known(30))], &[]));
        let nested = Level::after((1, 5), 1);
        let lie = shape(&[(1, 5, 6, Level::Known(1))], &[]);
        assert_eq!(levels.admit(&lie), Admission::TooDeep);
        // Sent as collected (a peer that took the deletion of their parent does).
        let collected = shape(&[(1, 5, 6, Level::Collected)], &[]);
        assert_eq!(levels.admit(&collected), Admission::Admitted);
        // As an item at 0 (beside a collected block): no collected block, refused.
        let at_zero = shape(&[(1, 5, 6, Level::Known(0))], &[]);
        assert_eq!(levels.admit(&at_zero), Admission::TooDeep);
        let honest = shape(
            &[(1, 5, 12, Level::Known(30)), (2, 0, 1, nested)],
            &[((2, 0), nested)],
        );
        assert_eq!(levels.admit(&honest), Admission::Admitted);
        record(&mut levels, &honest);
        assert_eq!(levels.runs(), 2);
    }

    /// A collected block recorded while yrs kept it pending, then sent again as a type
    /// (which yrs takes, having integrated nothing there yet): the type's level counts,
    /// not the block's 0, for what nests in it after; and what was nested in it before
    /// (yrs keeps that pending too) is watched, not counted from 0.
    #[test]
    fn a_pending_collected_block_taken_over_by_a_type_counts_at_the_type() {
        let mut levels = Levels::default();
        let pending = shape(&[(3, 0, 2, Level::Collected)], &[]);
        assert!(levels.record(&pending, |_| 0, |_| u32::MAX));
        // Nested in it before it is taken over: relative to it, so watched.
        let early = Level::after((3, 1), 1);
        let before = shape(&[(5, 0, 1, early)], &[((5, 0), early)]);
        assert_eq!(levels.admit(&before), Admission::Stalls);
        record(&mut levels, &before);
        assert_eq!(levels.stalled_types(), 1);
        // Taken over by a type at the limit: the watched one would be 33, within the
        // settled limit, so it goes; a new type in it is refused.
        let ty = Level::Known(MAX_TYPE_DEPTH);
        let over = shape(&[(3, 1, 2, ty)], &[]);
        assert_eq!(levels.admit(&over), Admission::Admitted);
        record(&mut levels, &over);
        assert_eq!(levels.runs.find((3, 0)), Some(Level::Collected));
        assert_eq!(levels.runs.find((3, 1)), Some(ty));
        assert_eq!(levels.stalled_types(), 0);
        let nested = Level::after((3, 1), 1);
        let under = shape(&[(4, 0, 1, nested)], &[((4, 0), nested)]);
        assert_eq!(levels.admit(&under), Admission::TooDeep);
        // Described as collected over a recorded item, the item's level stays; a
        // collected block yrs integrated is at 0.
        record(&mut levels, &shape(&[(3, 1, 2, Level::Collected)], &[]));
        assert_eq!(levels.runs.find((3, 1)), Some(ty));
        record(&mut levels, &shape(&[(3, 0, 1, Level::Collected)], &[]));
        assert_eq!(levels.runs.find((3, 0)), Some(Level::Known(0)));
    }

    /// A collected block yrs kept pending and then integrated (when another client's
    /// update brought what it waited for) is at 0 from then on: an item beside it and
    /// a deeper right origin is refused, not watched for ever.
    #[test]
    fn a_pending_collected_block_integrated_later_is_at_zero() {
        let mut levels = Levels::default();
        assert!(levels.record(&shape(&[(3, 0, 2, Level::Collected)], &[]), |_| 0, |_| 2));
        levels.place_collected(|_| 2);
        assert_eq!(levels.runs.find((3, 1)), Some(Level::Known(0)));
        record(&mut levels, &shape(&[(4, 0, 1, Level::Known(33))], &[]));
        let mut update = Shape::for_bytes(64);
        let left = update.settle(Level::after((3, 1), 0));
        let right = update.settle(Level::after((4, 0), 0));
        let item = update.beside(left, right);
        update.push(5, 0, 1, item);
        update.finish(false).unwrap();
        assert_eq!(levels.admit(&update), Admission::TooDeep);
    }

    /// Only what yrs took is recorded; what it gave up is forgotten.
    #[test]
    fn only_what_yrs_took_is_recorded() {
        let mut levels = Levels::default();
        let taken = |client| if client == 1 { 6 } else { 0 };
        let both = shape(
            &[(1, 0, 10, Level::Known(1)), (2, 0, 4, Level::Known(2))],
            &[],
        );
        assert!(levels.record(&both, taken, taken));
        let has = |levels: &Levels, id| levels.runs.find(id).is_some();
        assert!(has(&levels, (1, 5)) && !has(&levels, (1, 6)) && !has(&levels, (2, 0)));
        let mut known = yrs::StateVector::default();
        known.set_max(yrs::block::ClientID::new(1), 3);
        levels.forget_from(&known);
        assert!(has(&levels, (1, 2)) && !has(&levels, (1, 3)));
    }
}
