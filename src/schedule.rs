//! Where the plugin's systems run: four public sets, each run from a small schedule of
//! its own, and the steps inside them that let routes order against each other
//! without naming each other's systems.
//!
//! `PreUpdate`: [`TransportSystems::Receive`]
//! → [`PeerSyncSystems::Receive`] → [`PeerSyncSystems::Apply`]. `PostUpdate`:
//! [`PeerSyncSystems::Collect`] → [`PeerSyncSystems::Send`] →
//! [`TransportSystems::Send`]. Game systems in
//! `Update` see this frame's remote changes, and their own changes leave the same frame.
//!
//! The plugin has a few dozen systems (more with every synced type), each doing
//! microseconds of work on a quiet frame. Bevy's multi-threaded executor costs a few
//! microseconds per system it hands to a thread, which for these systems is most of
//! their cost: measured on a 2-core machine, an idle peer's frame took 225 µs with them
//! in `PreUpdate`/`PostUpdate`, and takes 76 µs as below (a bare `MinimalPlugins` app:
//! 43 µs; `cargo bench --bench frame`).
//! They mostly share the outgoing message queue and the documents, so they could not
//! run in parallel anyway. So each set's systems live in their own schedule
//! ([`Stage`]) with the single-threaded executor, and one exclusive system in that set
//! of `PreUpdate`/`PostUpdate` runs it. The sets keep their meaning for game systems
//! ordered against them.

use bevy::ecs::schedule::{ScheduleConfigs, ScheduleLabel, SingleThreadedExecutor};
use bevy::ecs::system::ScheduleSystem;
use bevy::prelude::*;

/// Where the plugin's systems run, in order.
///
/// `PreUpdate`: [`TransportSystems::Receive`]
/// → [`PeerSyncSystems::Receive`] → [`PeerSyncSystems::Apply`]. `PostUpdate`:
/// [`PeerSyncSystems::Collect`] → [`PeerSyncSystems::Send`] →
/// [`TransportSystems::Send`]. Game systems in
/// `Update` see this frame's remote changes and their own changes leave the same frame.
///
/// In each set one system runs the plugin's own systems of that set, single-threaded,
/// from the set's [`Stage`] schedule (see the [module docs](self) for why).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerSyncSystems {
    /// Link events and datagrams are decoded and routed.
    Receive,
    /// Remote state is applied to the world.
    Apply,
    /// Local changes are gathered for sending.
    Collect,
    /// Everything queued is encoded and handed to the transport.
    Send,
}

/// Where transport backends run (re-exported as
/// [`net::transport::TransportSystems`](crate::net::transport::TransportSystems)).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportSystems {
    /// `PreUpdate`: the backend fills
    /// [`TransportIo`](crate::net::transport::TransportIo).
    Receive,
    /// `PostUpdate`: the backend drains
    /// [`TransportIo`](crate::net::transport::TransportIo).
    Send,
}

/// The schedule that holds the plugin's systems of one [`PeerSyncSystems`] set.
#[derive(ScheduleLabel, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage(pub PeerSyncSystems);

/// Steps inside the stages. A route puts its systems in a step instead of ordering
/// them after another route's systems, so routes never name each other.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    /// Receive: what the documents tell the handshake (before hellos are read).
    NoteDocs,
    /// Receive: link events and datagrams decoded and routed to the routes' inboxes.
    Decode,
    /// Apply: y-sync messages answered, document updates queued or applied.
    SyncDocs,
    /// Apply: the entity document applied and materialised into the world.
    ApplyEntities,
    /// Apply: datagrams of the transient route decoded.
    DecodeValues,
    /// Apply: transient values applied to their entities (then smoothing).
    ApplyValues,
    /// Collect: new replicated entities get their ids.
    AssignIds,
    /// Collect: component values staged for the entity document.
    StageWrites,
    /// Collect: the staged values written to the entity document, in one transaction.
    FlushDoc,
    /// Send: hellos, pings and everything queued encoded for the transport.
    Encode,
    /// Send: what was encoded counted, before the transport takes it.
    Tally,
}

/// Adds systems to the plugin's [`Stage`] schedules.
pub(crate) trait StageAppExt {
    /// Adds `systems` to the [`Stage`] of `set`, creating it single-threaded.
    fn add_stage_systems<M>(
        &mut self,
        set: PeerSyncSystems,
        systems: impl IntoScheduleConfigs<ScheduleSystem, M>,
    ) -> &mut Self;
}

impl StageAppExt for App {
    fn add_stage_systems<M>(
        &mut self,
        set: PeerSyncSystems,
        systems: impl IntoScheduleConfigs<ScheduleSystem, M>,
    ) -> &mut Self {
        ensure_stage(self, set);
        let configs: ScheduleConfigs<ScheduleSystem> = systems.into_configs();
        self.add_systems(Stage(set), configs)
    }
}

/// Creates the [`Stage`] of `set`, single-threaded, with its steps in order, unless
/// it exists.
fn ensure_stage(app: &mut App, set: PeerSyncSystems) {
    let label = Stage(set);
    if app.world().resource::<Schedules>().contains(label) {
        return;
    }
    let mut schedule = Schedule::new(label);
    schedule.set_executor(SingleThreadedExecutor::new());
    match set {
        PeerSyncSystems::Receive => {
            // The built-in backends run in the stages: first here, last in `Send`.
            schedule
                .configure_sets((TransportSystems::Receive, Step::NoteDocs, Step::Decode).chain());
        }
        PeerSyncSystems::Apply => {
            schedule.configure_sets(
                (
                    Step::SyncDocs,
                    Step::ApplyEntities,
                    Step::DecodeValues,
                    Step::ApplyValues,
                )
                    .chain(),
            );
        }
        PeerSyncSystems::Collect => {
            schedule.configure_sets((Step::AssignIds, Step::StageWrites, Step::FlushDoc).chain());
        }
        PeerSyncSystems::Send => {
            schedule.configure_sets((Step::Encode, Step::Tally, TransportSystems::Send).chain());
        }
    }
    app.add_schedule(schedule);
}

/// Orders the four sets and adds their runners, one in each set. Part of
/// [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    app.configure_sets(
        PreUpdate,
        (
            TransportSystems::Receive,
            PeerSyncSystems::Receive,
            PeerSyncSystems::Apply,
        )
            .chain(),
    )
    .configure_sets(
        PostUpdate,
        (
            PeerSyncSystems::Collect,
            PeerSyncSystems::Send,
            TransportSystems::Send,
        )
            .chain(),
    );
    for set in [
        PeerSyncSystems::Receive,
        PeerSyncSystems::Apply,
        PeerSyncSystems::Collect,
        PeerSyncSystems::Send,
    ] {
        // Created here too, so a runner never meets a missing schedule.
        ensure_stage(app, set);
    }
    app.add_systems(
        PreUpdate,
        (
            run_receive.in_set(PeerSyncSystems::Receive),
            run_apply.in_set(PeerSyncSystems::Apply),
        ),
    )
    .add_systems(
        PostUpdate,
        (
            run_collect.in_set(PeerSyncSystems::Collect),
            run_send.in_set(PeerSyncSystems::Send),
        ),
    );
}

fn run_receive(world: &mut World) {
    world.run_schedule(Stage(PeerSyncSystems::Receive));
}

fn run_apply(world: &mut World) {
    world.run_schedule(Stage(PeerSyncSystems::Apply));
}

fn run_collect(world: &mut World) {
    world.run_schedule(Stage(PeerSyncSystems::Collect));
}

fn run_send(world: &mut World) {
    world.run_schedule(Stage(PeerSyncSystems::Send));
}
