//! Local-first persistence (opt-in): the room's documents are saved to a file on
//! native or to browser storage on wasm, loaded at start, and merged with the room
//! on join (y-sync does that like for any rejoin).
//!
//! The save is loaded when the app finishes building, before `Startup`, so the
//! game's own startup systems already see it. A restored peer takes back its
//! [`ReplicaId`](crate::net::peer::ReplicaId) (and with it ownership of its entities) but
//! writes with a fresh yrs client id. Two apps must never share one save: the room
//! would see one replica twice, and the handshake refuses that. The save holds the
//! replica's secret key (see [`identity`](crate::net::identity)): whoever has the
//! file can write as that replica, so keep it like a password.
//!
//! A save is written whole to a temporary file and renamed over the old one, so a
//! crash mid-save leaves the previous save. A save that is corrupted or truncated is
//! refused as a whole: nothing of it reaches the documents, a clear error is logged
//! and written as [`PersistenceFailed`], the file is moved aside to
//! `<name>.corrupt` (so the next save does not destroy what a person may want to
//! inspect), and the game goes on with the room's state.
//!
//! ## Format
//! `BPSY` magic, a format byte (`2`), the replica key's 32-byte seed (a restored peer
//! proves the same replica id and keeps owning what it owned), a section count, then per section a document
//! id byte (`0` shared, `1` entities), a little-endian `u32` length and a yrs v1
//! update of the whole document; last, a CRC-32 of everything before it.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_peer_sync::persistence::PersistencePlugin;
//! use bevy_peer_sync::prelude::*;
//!
//! App::new()
//!     .add_plugins(MinimalPlugins)
//!     .add_plugins(PeerSyncPlugin::new("ws://127.0.0.1:3536/board"))
//!     // A file on native, `localStorage["board"]` in the browser.
//!     .add_plugins(PersistencePlugin::new("board"))
//!     .run();
//! ```

use std::time::Duration;

use bevy::prelude::*;
use yrs::Update;

use crate::doc::levels::Shape;
use crate::doc::{Decoded, DocLimits, SharedDoc, decode_update};
use crate::durable::EntityDoc;
use crate::error::{PeerSyncError, SaveError};
use crate::net::identity::PeerKey;
use crate::net::peer::LocalPeer;
use crate::net::peer::PeerId;
use crate::schedule::PeerSyncSystems;

const MAGIC: &[u8; 4] = b"BPSY";
const FORMAT: u8 = 2;
/// Magic, format byte, key seed, section count.
const HEADER: usize = 4 + 1 + 32 + 1;
const SHARED: u8 = 0;
const ENTITIES: u8 = 1;

/// Saves and loads the room's documents. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PersistencePlugin {
    /// Where saves go.
    pub store: SaveStore,
    /// How often changes are saved (also on exit).
    pub autosave_every: Duration,
}

/// Where a save lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveStore {
    /// A file (native).
    File(std::path::PathBuf),
    /// A `localStorage` key (wasm), holding the save as base64.
    BrowserStorage(String),
}

impl PersistencePlugin {
    /// Saves under `name`: the file `name.bpsy` in the working directory on native,
    /// the `localStorage` key `name` in the browser.
    pub fn new(name: &str) -> Self {
        if cfg!(target_arch = "wasm32") {
            Self::browser_storage(name)
        } else {
            Self::file(format!("{name}.bpsy"))
        }
    }

    /// Saves to the file at `path`.
    pub fn file(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            store: SaveStore::File(path.into()),
            autosave_every: Duration::from_secs(5),
        }
    }

    /// Saves to the browser's `localStorage` under `key`.
    pub fn browser_storage(key: impl Into<String>) -> Self {
        Self {
            store: SaveStore::BrowserStorage(key.into()),
            autosave_every: Duration::from_secs(5),
        }
    }

    /// Saves changes this often.
    pub fn with_autosave(mut self, every: Duration) -> Self {
        self.autosave_every = every;
        self
    }
}

/// A save could not be loaded or written.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct PersistenceFailed {
    /// What went wrong (the same text as the log line).
    pub error: String,
}

/// Save and load state, for a HUD or a test.
#[derive(Resource, Debug, Clone)]
pub struct Persistence {
    store: SaveStore,
    autosave_every: Duration,
    loaded: Option<bool>,
    last_saved_updates: Option<u64>,
    last_save: Duration,
    saves: u64,
}

impl Persistence {
    /// Where saves go.
    pub fn store(&self) -> &SaveStore {
        &self.store
    }

    /// `Some(true)` once a save was loaded, `Some(false)` if there was none or it was
    /// refused, `None` before the first frame.
    pub fn loaded(&self) -> Option<bool> {
        self.loaded
    }

    /// Saves written so far.
    pub fn saves(&self) -> u64 {
        self.saves
    }
}

impl Plugin for PersistencePlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(Persistence {
            store: self.store.clone(),
            autosave_every: self.autosave_every,
            loaded: None,
            last_saved_updates: None,
            last_save: Duration::ZERO,
            saves: 0,
        })
        .add_message::<PersistenceFailed>()
        .add_systems(PostUpdate, autosave.after(PeerSyncSystems::Collect));
    }

    /// Loads the save once every plugin (and so every synced type) is in place.
    fn finish(&self, app: &mut App) {
        load_save(app.world_mut());
    }
}

/// Encodes the documents as one save.
pub fn encode_save(key: &PeerKey, shared: &SharedDoc, entities: Option<&EntityDoc>) -> Vec<u8> {
    let mut sections = vec![(SHARED, shared.encode_state())];
    if let Some(entities) = entities {
        sections.push((ENTITIES, entities.encode_state()));
    }
    let mut out = Vec::with_capacity(16 + sections.iter().map(|s| s.1.len() + 5).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&key.seed());
    out.push(sections.len() as u8);
    for (id, bytes) in sections {
        out.push(id);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A checked save: one whole-document update per document.
#[derive(Debug)]
pub struct DecodedSave {
    /// The key of the replica that wrote it.
    pub key: PeerKey,
    /// The shared document's state.
    pub shared: Option<Update>,
    /// The entity document's state.
    pub entities: Option<Update>,
    /// Where the items of each sit (shared, entities), for the documents' level
    /// index (see `doc::levels`): a save is checked like any peer's update.
    shapes: (Shape, Shape),
}

/// Checks and decodes a save. Any damage (wrong magic or format, bad checksum,
/// truncation, an update yrs cannot decode or apply) refuses the whole save.
pub fn decode_save(bytes: &[u8]) -> Result<DecodedSave, SaveError> {
    if bytes.len() < HEADER + 4 {
        return Err(SaveError::TooShort { len: bytes.len() });
    }
    if &bytes[..4] != MAGIC {
        return Err(SaveError::NotASave);
    }
    if bytes[4] != FORMAT {
        return Err(SaveError::Format {
            found: bytes[4],
            supported: FORMAT,
        });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(SaveError::Checksum);
    }
    let key = PeerKey::from_seed(body[5..37].try_into().expect("32 bytes"));
    let count = body[HEADER - 1];
    let mut at = HEADER;
    let mut save = DecodedSave {
        key,
        shared: None,
        entities: None,
        shapes: Default::default(),
    };
    let limits = DocLimits {
        max_update_size: u32::MAX as usize,
        ..DocLimits::default()
    };
    for _ in 0..count {
        let header = body.get(at..at + 5).ok_or(SaveError::Truncated)?;
        let id = header[0];
        let len = u32::from_le_bytes(header[1..].try_into().expect("4 bytes")) as usize;
        at += 5;
        let section = body.get(at..at + len).ok_or(SaveError::Truncated)?;
        at += len;
        // Decode, then apply to a scratch document: whatever yrs refuses, it refuses
        // here, before anything touches the room's documents.
        let update = decode_update(section, &limits)
            .map_err(|reason| SaveError::Undecodable { id, reason })?;
        let scratch = yrs::Doc::new();
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            use yrs::Transact;
            scratch.transact_mut().apply_update(update.update)
        }));
        let unappliable = |reason: String| SaveError::Unappliable { id, reason };
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(unappliable(error.to_string())),
            Err(_) => return Err(unappliable("yrs panicked".into())),
        }
        let update = decode_update(section, &limits)
            .map_err(|reason| SaveError::Undecodable { id, reason })?;
        match id {
            SHARED if save.shared.is_none() => {
                save.shared = Some(update.update);
                save.shapes.0 = update.shape;
            }
            ENTITIES if save.entities.is_none() => {
                save.entities = Some(update.update);
                save.shapes.1 = update.shape;
            }
            _ => return Err(SaveError::UnknownDocument(id)),
        }
    }
    if at != body.len() {
        return Err(SaveError::TrailingBytes);
    }
    Ok(save)
}

fn store_name(store: &SaveStore) -> String {
    match store {
        SaveStore::File(path) => path.display().to_string(),
        SaveStore::BrowserStorage(key) => format!("localStorage[{key}]"),
    }
}

/// Loads the save into the app's documents. Runs in [`Plugin::finish`].
fn load_save(world: &mut World) {
    let store = world.resource::<Persistence>().store.clone();
    let name = store_name(&store);
    let fail = |world: &mut World, error: PeerSyncError| {
        error!("{error}");
        world.write_message(PersistenceFailed {
            error: error.to_string(),
        });
        world.resource_mut::<Persistence>().loaded = Some(false);
    };
    let bytes = match read_store(&store) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            info!("no save at `{name}` yet; starting from the room's state");
            world.resource_mut::<Persistence>().loaded = Some(false);
            return;
        }
        Err(reason) => return fail(world, PeerSyncError::Load { path: name, reason }),
    };
    let save = match decode_save(&bytes) {
        Ok(save) => save,
        Err(error) => {
            let aside = set_aside(&store);
            let error = PeerSyncError::DamagedSave {
                path: name,
                error,
                aside,
            };
            return fail(world, error);
        }
    };
    let (shared_shape, entities_shape) = save.shapes;
    if let Some(update) = save.shared
        && let Err(error) = world.resource::<SharedDoc>().synced().apply_remote(vec![(
            PeerId(0),
            Decoded {
                update,
                shape: shared_shape,
            },
            0,
        )])
    {
        error!("the saved shared document did not apply: {error}");
    }
    let replica = save.key.replica();
    world.resource_mut::<LocalPeer>().restore_key(save.key);
    match save.entities {
        Some(update) if world.contains_resource::<EntityDoc>() => {
            let shape = entities_shape;
            crate::durable::restore(world, Decoded { update, shape });
        }
        Some(_) => warn!(
            "the save at `{name}` holds entities, but this app registers no durable component; they stay in the file"
        ),
        None => {}
    }
    info!(
        "loaded the save at `{name}` (`{}` bytes, replica `{}`)",
        bytes.len(),
        replica
    );
    world.resource_mut::<Persistence>().loaded = Some(true);
}

fn autosave(
    time: Res<Time<Real>>,
    mut persistence: ResMut<Persistence>,
    local: Res<LocalPeer>,
    shared: Res<SharedDoc>,
    entities: Option<Res<EntityDoc>>,
    mut exits: MessageReader<AppExit>,
    mut failed: MessageWriter<PersistenceFailed>,
) {
    if persistence.loaded.is_none() {
        return;
    }
    let exiting = exits.read().next().is_some();
    let now = time.elapsed();
    if !exiting && now < persistence.last_save + persistence.autosave_every {
        return;
    }
    let updates = shared.update_count() + entities.as_ref().map_or(0, |e| e.update_count());
    if persistence.last_saved_updates == Some(updates) {
        return;
    }
    persistence.last_save = now;
    let bytes = encode_save(local.key(), &shared, entities.as_deref());
    match write_store(&persistence.store, &bytes) {
        Ok(()) => {
            persistence.last_saved_updates = Some(updates);
            persistence.saves += 1;
            debug!(
                "saved `{}` bytes to `{}`",
                bytes.len(),
                store_name(&persistence.store)
            );
        }
        Err(reason) => {
            let error = format!(
                "could not save to `{}`: {reason}; the documents stay in memory and saving is retried",
                store_name(&persistence.store)
            );
            error!("{error}");
            failed.write(PersistenceFailed { error });
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn read_store(store: &SaveStore) -> Result<Option<Vec<u8>>, String> {
    match store {
        SaveStore::File(path) => match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.to_string()),
        },
        SaveStore::BrowserStorage(_) => Err("browser storage exists only in the browser".into()),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn write_store(store: &SaveStore, bytes: &[u8]) -> Result<(), String> {
    match store {
        SaveStore::File(path) => {
            let mut temp = path.clone().into_os_string();
            temp.push(".tmp");
            std::fs::write(&temp, bytes).map_err(|e| e.to_string())?;
            std::fs::rename(&temp, path).map_err(|e| e.to_string())
        }
        SaveStore::BrowserStorage(_) => Err("browser storage exists only in the browser".into()),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn set_aside(store: &SaveStore) -> String {
    match store {
        SaveStore::File(path) => {
            let mut aside = path.clone().into_os_string();
            aside.push(".corrupt");
            match std::fs::rename(path, &aside) {
                Ok(()) => format!("it was moved to `{}`", aside.to_string_lossy()),
                Err(error) => format!(
                    "it could not be moved aside ({error}) and will be replaced by the next save"
                ),
            }
        }
        SaveStore::BrowserStorage(_) => "nothing was changed".into(),
    }
}

#[cfg(target_arch = "wasm32")]
fn storage() -> Result<web_sys::Storage, String> {
    web_sys::window()
        .ok_or("no browser window")?
        .local_storage()
        .map_err(|_| "localStorage is not allowed here".to_string())?
        .ok_or_else(|| "localStorage is not available".to_string())
}

#[cfg(target_arch = "wasm32")]
fn read_store(store: &SaveStore) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine;
    match store {
        SaveStore::BrowserStorage(key) => {
            let Some(text) = storage()?
                .get_item(key)
                .map_err(|_| "localStorage read failed")?
            else {
                return Ok(None);
            };
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Some)
                .map_err(|e| format!("not base64: {e}"))
        }
        SaveStore::File(_) => Err("there is no file system in the browser".into()),
    }
}

#[cfg(target_arch = "wasm32")]
fn write_store(store: &SaveStore, bytes: &[u8]) -> Result<(), String> {
    use base64::Engine;
    match store {
        SaveStore::BrowserStorage(key) => storage()?
            .set_item(
                key,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            )
            .map_err(|_| "localStorage write failed (quota?)".to_string()),
        SaveStore::File(_) => Err("there is no file system in the browser".into()),
    }
}

#[cfg(target_arch = "wasm32")]
fn set_aside(store: &SaveStore) -> String {
    match store {
        SaveStore::BrowserStorage(key) => match storage() {
            Ok(storage) => {
                let aside = format!("{key}.corrupt");
                if let Ok(Some(text)) = storage.get_item(key) {
                    let _ = storage.set_item(&aside, &text);
                }
                format!("it was copied to `localStorage[{aside}]`")
            }
            Err(error) => format!("it could not be copied aside ({error})"),
        },
        SaveStore::File(_) => "nothing was changed".into(),
    }
}
