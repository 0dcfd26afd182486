//! Undo and redo of this peer's own edits to the [`SharedDoc`], as Bevy messages.
//!
//! A yrs `UndoManager` tracks only local transactions on the shared types you name
//! (remote updates arrive with their own origin and are never captured), so one
//! player's undo never reverts another's edit: it removes what this peer inserted and
//! restores what it deleted, and the result travels like any other local edit.
//! Edits closer together than [`UndoConfig::capture_timeout`] are one undo step
//! (typing a word is one step, not one per letter); time is Bevy's real-time clock.
//!
//! Scope: shared texts, maps and arrays of the room's [`SharedDoc`]. Durable
//! *components* are not covered: undoing a write to an entity whose ownership moved
//! on, or re-creating an entity someone else despawned, would be a write the others
//! refuse, so component undo belongs in game logic, which knows its rules.
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//! use bevy_peer_sync::undo::{Redo, Undo, UndoPlugin};
//!
//! /// Your input handling decides when; here, a message from the game's UI.
//! #[derive(Message)]
//! enum EditCommand { Undo, Redo }
//!
//! fn undo_redo(mut commands: MessageReader<EditCommand>, mut undo: MessageWriter<Undo>, mut redo: MessageWriter<Redo>) {
//!     for command in commands.read() {
//!         match command {
//!             EditCommand::Undo => { undo.write(Undo); }
//!             EditCommand::Redo => { redo.write(Redo); }
//!         }
//!     }
//! }
//!
//! let mut app = App::new();
//! app.add_plugins(MinimalPlugins)
//!     .add_plugins(PeerSyncPlugin::with_custom_transport())
//!     .add_plugins(UndoPlugin::texts(["note"]))
//!     .add_message::<EditCommand>()
//!     .add_systems(Update, undo_redo);
//! app.update();
//! //! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bevy::prelude::*;
use yrs::UndoManager;
use yrs::undo::Options;

use crate::doc::SharedDoc;
use crate::schedule::PeerSyncSystems;

/// Undo this peer's last edit step.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Undo;

/// Redo the last undone step.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Redo;

/// Undo settings.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct UndoConfig {
    /// Edits closer together than this are one undo step.
    pub capture_timeout: Duration,
}

impl Default for UndoConfig {
    fn default() -> Self {
        Self {
            capture_timeout: Duration::from_millis(500),
        }
    }
}

/// What is tracked: root shared types of the [`SharedDoc`], by name and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// A shared text.
    Text(String),
    /// A shared map.
    Map(String),
    /// A shared array.
    Array(String),
}

/// Adds [`Undo`] / [`Redo`] for the named shared types.
#[derive(Debug, Clone, Default)]
pub struct UndoPlugin {
    /// The tracked types.
    pub tracked: Vec<Tracked>,
    /// Settings.
    pub config: UndoConfig,
}

impl UndoPlugin {
    /// Tracks these shared texts.
    pub fn texts<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self {
            tracked: names.into_iter().map(|n| Tracked::Text(n.into())).collect(),
            config: UndoConfig::default(),
        }
    }

    /// Also tracks `tracked`.
    pub fn with(mut self, tracked: Tracked) -> Self {
        self.tracked.push(tracked);
        self
    }
}

/// The undo history of this peer.
#[derive(Resource)]
pub struct UndoHistory {
    manager: UndoManager,
    clock: Arc<AtomicU64>,
}

impl std::fmt::Debug for UndoHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UndoHistory")
            .field("undo_steps", &self.manager.undo_stack().len())
            .field("redo_steps", &self.manager.redo_stack().len())
            .finish()
    }
}

impl UndoHistory {
    /// Whether there is a step to undo.
    pub fn can_undo(&self) -> bool {
        self.manager.can_undo()
    }

    /// Whether there is a step to redo.
    pub fn can_redo(&self) -> bool {
        self.manager.can_redo()
    }

    /// Ends the current step: the next edit starts a new one.
    pub fn end_step(&mut self) {
        self.manager.reset();
    }
}

impl Plugin for UndoPlugin {
    fn build(&self, app: &mut App) {
        let clock = Arc::new(AtomicU64::new(0));
        let source = Arc::clone(&clock);
        let mut manager = UndoManager::with_options(Options {
            capture_timeout_millis: self.config.capture_timeout.as_millis() as u64,
            tracked_origins: Default::default(),
            capture_transaction: None,
            timestamp: Arc::new(move || source.load(Ordering::Relaxed)),
            init_undo_stack: Vec::new(),
            init_redo_stack: Vec::new(),
        });
        let doc = SharedDoc::get_or_init(app.world_mut());
        for tracked in &self.tracked {
            match tracked {
                Tracked::Text(name) => manager.expand_scope(doc.doc(), &doc.text(name)),
                Tracked::Map(name) => manager.expand_scope(doc.doc(), &doc.map(name)),
                Tracked::Array(name) => manager.expand_scope(doc.doc(), &doc.array(name)),
            }
        }
        app.insert_resource(UndoHistory { manager, clock })
            .insert_resource(self.config.clone())
            .add_message::<Undo>()
            .add_message::<Redo>()
            .add_systems(PreUpdate, tick_clock.before(PeerSyncSystems::Receive))
            .add_systems(PostUpdate, apply_undo.before(PeerSyncSystems::Collect));
    }
}

fn tick_clock(time: Res<Time<Real>>, history: Res<UndoHistory>) {
    history
        .clock
        .store(time.elapsed().as_millis() as u64, Ordering::Relaxed);
}

fn apply_undo(
    mut history: ResMut<UndoHistory>,
    mut undo: MessageReader<Undo>,
    mut redo: MessageReader<Redo>,
) {
    for _ in undo.read() {
        if !history.manager.undo_blocking() {
            debug!("nothing to undo");
        }
    }
    for _ in redo.read() {
        if !history.manager.redo_blocking() {
            debug!("nothing to redo");
        }
    }
}
