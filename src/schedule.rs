//! Where the plugin's own systems run: one small schedule per [`PeerSyncSystems`] set.
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

use crate::PeerSyncSystems;

/// The schedule that holds the plugin's systems of one [`PeerSyncSystems`] set.
#[derive(ScheduleLabel, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage(pub PeerSyncSystems);

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

/// Creates the [`Stage`] of `set`, single-threaded, unless it exists.
fn ensure_stage(app: &mut App, set: PeerSyncSystems) {
    let label = Stage(set);
    if !app.world().resource::<Schedules>().contains(label) {
        let mut schedule = Schedule::new(label);
        schedule.set_executor(SingleThreadedExecutor::new());
        app.add_schedule(schedule);
    }
}

/// Adds the four runners, one in each set. Part of [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
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
