//! The handshake with one peer: a three-way exchange of hellos (see [`Handshake`]),
//! the schema check, and what a fresh joiner says.

use std::time::Duration;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use bevy::platform::collections::HashMap;

use crate::net::identity::{self, Nonce, RoomSecret, Side};
use crate::net::peer::{
    LocalPeer, Peer, PeerId, PeerJoined, PeerLeft, PeerLink, PeerRejected, PeerReplica,
    RejectReason, ReplicaId,
};
use crate::net::transport::{Channel, Packet, TransportIo};
use crate::net::wire::{self, DecodeError, Hello, Message, PROTOCOL_VERSION};
use crate::registry::SyncRegistry;

/// Whether this peer's synced documents are still empty (nothing written, nothing
/// received), for [`Hello::fresh`], and which one peer that was said to. Only a hint: a peer wrongly taken for fresh is sent a whole state
/// where a diff would do.
///
/// A fresh peer asks one peer for everything: its hello to the first link says
/// fresh, to later ones not, and it holds back y-sync step 1 to the others (whose
/// answer would be the same whole state again) until that state comes, the asked
/// peer goes, or the document engine tires of waiting. The engine keeps `empty` and
/// `answered`; the handshake keeps `asked`.
#[derive(Resource, Debug)]
pub(crate) struct FreshJoin {
    /// Nothing written, nothing received.
    pub(crate) empty: bool,
    /// The peer our hello said fresh to: it sends us its whole state.
    pub(crate) asked: Option<PeerId>,
    /// Its state (some of it) came.
    pub(crate) answered: bool,
}

impl Default for FreshJoin {
    fn default() -> Self {
        Self {
            empty: true,
            asked: None,
            answered: false,
        }
    }
}

impl FreshJoin {
    /// Whether y-sync step 1 to `peer` waits: its answer would be a whole state while
    /// the one asked for is on its way.
    pub(crate) fn holds_step1_to(&self, peer: PeerId) -> bool {
        self.empty && !self.answered && self.asked.is_some_and(|asked| asked != peer)
    }

    /// The asked peer is gone (left, or refused): the next link may be asked.
    pub(crate) fn forget(&mut self, peer: PeerId) {
        if self.asked == Some(peer) {
            self.asked = None;
            self.answered = false;
        }
    }
}

/// A link whose handshake is not done this long after our first hello is refused
/// ([`RejectReason::HandshakeTimeout`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The first wait before a hello is repeated; it doubles up to [`HELLO_RETRY_MAX`].
const HELLO_RETRY: Duration = Duration::from_millis(200);
const HELLO_RETRY_MAX: Duration = Duration::from_secs(2);

/// The handshake with one peer: a three-way exchange of hellos.
///
/// A link is [`PeerLink::Connected`] (and [`PeerJoined`] is written) once this side
/// has the peer's hello *and* knows the peer has ours, so neither side sends anything
/// the other would drop as "before the handshake". The first datagrams of a data
/// channel are not guaranteed: webrtc-rs drops data that arrives before its
/// negotiated channels are open (Chromium sends that early), and a backend can hand
/// over a peer's data before it reports the link. So a side that does not know its
/// hello arrived repeats it, with backoff, asking for an answer
/// ([`Hello::waiting`]); the answer says [`Hello::heard`].
///
/// Each side's hellos carry its keys and a nonce fresh for the link; once a side has
/// the other's hello, its hellos also carry its proof for both nonces (see
/// [`identity`]). A peer's hello is *taken* once its proof checks.
#[derive(Debug)]
pub(crate) struct Handshake {
    /// The peer's replica, once its hello was taken (its proof checked).
    pub(super) theirs: Option<ReplicaId>,
    /// What the peer's first hello said of its keys and nonce.
    their_side: Option<Side>,
    /// The yrs client ids it writes the documents with (by document id), from its
    /// session key, once its hello was taken.
    their_clients: Option<[u64; 2]>,
    /// Our nonce for this link.
    our_nonce: Nonce,
    /// The peer has shown it has our hello.
    ours_heard: bool,
    last_sent: Duration,
    /// When our first hello on the link left.
    started: Option<Duration>,
    retry: Duration,
    /// What our hellos on this link say of [`Hello::fresh`], fixed by the first.
    our_fresh: Option<bool>,
    /// What the peer's hello said of [`Hello::fresh`].
    their_fresh: bool,
    /// When we last answered a hello that asked for an answer.
    last_answer: Option<Duration>,
}

impl Default for Handshake {
    fn default() -> Self {
        Self {
            theirs: None,
            their_side: None,
            their_clients: None,
            our_nonce: identity::random_bytes(),
            ours_heard: false,
            last_sent: Duration::ZERO,
            started: None,
            retry: Duration::ZERO,
            our_fresh: None,
            their_fresh: false,
            last_answer: None,
        }
    }
}

impl Handshake {
    /// The yrs client id the peer writes document `doc` with, once its hello was taken.
    pub(crate) fn their_client_id(&self, doc: u8) -> Option<u64> {
        self.their_clients?.get(usize::from(doc)).copied()
    }

    /// Whether the peer sends us its whole state on joining (we said we were fresh),
    /// so we need not ask with y-sync step 1.
    pub(crate) fn we_are_sent_everything(&self) -> bool {
        self.our_fresh == Some(true)
    }

    /// Whether we send the peer our whole state on joining (it said it was fresh and
    /// will not ask).
    pub(crate) fn they_want_everything(&self) -> bool {
        self.their_fresh
    }

    /// [`Hello::fresh`] for our next hello on this link to `peer`: fixed by the first,
    /// and true on one link at a time (see [`FreshJoin`]).
    fn fresh(&mut self, docs: &mut FreshJoin, peer: PeerId) -> bool {
        *self.our_fresh.get_or_insert_with(|| {
            let fresh = docs.empty && docs.asked.is_none();
            if fresh {
                docs.asked = Some(peer);
            }
            fresh
        })
    }

    fn sent(&mut self, now: Duration) {
        self.last_sent = now;
        self.started.get_or_insert(now);
        self.retry = if self.retry.is_zero() {
            HELLO_RETRY
        } else {
            (self.retry * 2).min(HELLO_RETRY_MAX)
        };
    }

    /// Whether a hello asking for an answer gets one now: the first always; then at
    /// most one per half [`HELLO_RETRY`], which an honest peer's repeats never come
    /// faster than, so a flood of hellos is not answered hello for hello.
    fn may_answer(&self, now: Duration) -> bool {
        self.last_answer
            .is_none_or(|at| now.saturating_sub(at) >= HELLO_RETRY / 2)
    }

    fn due(&self, now: Duration) -> bool {
        !self.ours_heard && now >= self.last_sent + self.retry
    }

    /// Whether the peer's hello was taken.
    pub(crate) fn knows_theirs(&self) -> bool {
        self.theirs.is_some()
    }

    /// Something but a hello came from the peer: it has ours.
    pub(crate) fn heard_from_them(&mut self) {
        self.ours_heard = true;
    }
}

/// What one of our hellos says of the handshake: [`Hello::heard`], [`Hello::waiting`],
/// [`Hello::fresh`].
#[derive(Debug, Default, Clone, Copy)]
struct HelloFlags {
    heard: bool,
    waiting: bool,
    fresh: bool,
}

/// Who says a hello: this peer, its registered types and the room's secret.
#[derive(Clone, Copy)]
struct Speaker<'a> {
    local: &'a LocalPeer,
    registry: &'a SyncRegistry,
    secret: Option<&'a RoomSecret>,
}

/// Sends our hello to `peer` (see [`Handshake`]): with our proof once we have theirs.
fn send_hello(
    io: &mut TransportIo,
    speaker: Speaker,
    handshake: &Handshake,
    peer: PeerId,
    flags: HelloFlags,
) {
    let hello = Message::Hello(hello(speaker, handshake, flags));
    // A hello is small and fixed; fragment it anyway should a huge schema need it.
    let frame = wire::encode(&hello).expect("a hello always encodes");
    for bytes in wire::fragment(frame, u32::MAX).expect("a hello is far below the fragment limit") {
        io.send(Packet {
            peer,
            channel: Channel::Reliable,
            bytes,
        });
    }
}

/// The hello `world`'s app would send now to `peer` saying `heard` and `waiting` (a
/// test crafts traffic with it).
pub(crate) fn hello_to(world: &World, peer: PeerId, heard: bool, waiting: bool) -> Option<Hello> {
    let entity = world.resource::<crate::net::peer::Peers>().entity(peer)?;
    let inbound = world.get::<super::Inbound>(entity)?;
    let speaker = Speaker {
        local: world.resource::<LocalPeer>(),
        registry: world.resource::<SyncRegistry>(),
        secret: world
            .resource::<super::SessionConfig>()
            .room_secret
            .as_ref(),
    };
    let flags = HelloFlags {
        heard,
        waiting,
        fresh: inbound.handshake.our_fresh.unwrap_or(false),
    };
    Some(hello(speaker, &inbound.handshake, flags))
}

/// Our hello on the link of `handshake`.
fn hello(speaker: Speaker, handshake: &Handshake, flags: HelloFlags) -> Hello {
    let HelloFlags {
        heard,
        waiting,
        fresh,
    } = flags;
    let Speaker {
        local,
        registry,
        secret,
    } = speaker;
    let keys = local.keys();
    let ours = Side {
        key: keys.key.public(),
        session: keys.session.public(),
        nonce: handshake.our_nonce,
        peer: local.id().unwrap_or(PeerId(0)),
    };
    let schema = registry.schema_strings();
    Hello {
        crate_version: env!("CARGO_PKG_VERSION").to_owned(),
        replica: local.replica().0,
        key: ours.key,
        session: ours.session,
        nonce: ours.nonce,
        proof: handshake
            .their_side
            .map(|theirs| keys.prove(&ours, &theirs, secret)),
        schema_hash: crate::registry::schema_hash(&schema),
        schema,
        heard,
        waiting,
        fresh,
    }
}

/// Which link each replica whose hello was taken is on: a second link of one
/// replica is refused while the first lives.
#[derive(Resource, Debug, Default)]
pub(crate) struct ConnectedReplicas(HashMap<ReplicaId, (Entity, PeerId)>);

/// What became of a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HelloOutcome {
    /// Taken (or noted): the peer is still in.
    Taken,
    /// Dropped, to be counted as malformed: the peer is still in.
    Dropped,
    /// The peer was refused.
    Refused,
}

/// What hellos are answered and judged with.
#[derive(SystemParam)]
pub(crate) struct Hellos<'w, 's> {
    commands: Commands<'w, 's>,
    local: Res<'w, LocalPeer>,
    registry: Res<'w, SyncRegistry>,
    config: Res<'w, super::SessionConfig>,
    fresh: ResMut<'w, FreshJoin>,
    replicas: ResMut<'w, ConnectedReplicas>,
    links: Query<'w, 's, Has<PeerReplica>, With<Peer>>,
    joined: MessageWriter<'w, PeerJoined>,
    rejected: MessageWriter<'w, PeerRejected>,
    left: MessageWriter<'w, PeerLeft>,
}

impl Hellos<'_, '_> {
    fn speaker(&self) -> Speaker<'_> {
        Speaker {
            local: &self.local,
            registry: &self.registry,
            secret: self.config.room_secret.as_ref(),
        }
    }

    /// Takes a hello from `from` on the link of `entity`: checks the first one
    /// (refusing the peer if it does not match), and the first proof in one; notes
    /// what it says, and answers it if it asks.
    pub(crate) fn take(
        &mut self,
        (from, entity): (PeerId, Entity),
        hello: &Hello,
        link: &mut PeerLink,
        handshake: &mut Handshake,
        io: &mut TransportIo,
        now: Duration,
    ) -> HelloOutcome {
        let side = Side {
            key: hello.key,
            session: hello.session,
            nonce: hello.nonce,
            peer: from,
        };
        let refusal = match handshake.their_side {
            None => {
                let refusal = self.check_first(hello);
                // Known from now on, refused or not: our hello says why with a proof.
                handshake.their_side = Some(side);
                handshake.their_fresh = hello.fresh;
                refusal.err()
            }
            Some(known) if known != side => {
                // Not the peer's first word on this link: dropped, the first stands.
                debug!("dropped a hello from peer `{from}`: its keys or nonce changed on one link");
                return HelloOutcome::Dropped;
            }
            Some(_) => None,
        };
        let refusal = refusal.or_else(|| {
            let proof = hello
                .proof
                .as_ref()
                .filter(|_| handshake.theirs.is_none())?;
            let ours = Side {
                key: self.local.key().public(),
                session: self.local.keys().session.public(),
                nonce: handshake.our_nonce,
                peer: self.local.id().unwrap_or(PeerId(0)),
            };
            if let Err(reason) =
                identity::check(proof, &side, &ours, self.config.room_secret.as_ref())
            {
                return Some(reason);
            }
            let replica = ReplicaId(hello.replica);
            // (Only once proved: a stranger saying our key is merely malformed.)
            if replica == self.local.replica() {
                return Some(RejectReason::SameReplica(replica));
            }
            if let Some(&(other, other_peer)) = self.replicas.0.get(&replica)
                && other != entity
                && let Ok(was_connected) = self.links.get(other)
            {
                // Proved on this link over our nonce for it: newer than the other
                // (a reconnect whose old link has not closed yet, or a second app
                // from one save). The older one ends.
                self.replace_link(other, other_peer, replica, was_connected, io);
            }
            debug!(
                "hello from peer `{from}` proved replica `{replica}` (bevy_peer_sync `{}`)",
                hello.crate_version
            );
            // (Entries of links gone since are dropped: one per link ever proved.)
            let links = &self.links;
            self.replicas.0.retain(|_, (link, _)| links.contains(*link));
            self.replicas.0.insert(replica, (entity, from));
            handshake.theirs = Some(replica);
            handshake.their_clients =
                Some([0, 1].map(|doc| identity::client_id(&side.session, doc)));
            // The proof is over our nonce: they have our hello.
            handshake.ours_heard = true;
            None
        });
        if let Some(reason) = refusal {
            if hello.waiting || hello.proof.is_some() {
                // Ours, once, so that they can tell why too (schemas, secrets); and why,
                // where they could not tell it from ours (a replica already in).
                send_hello(io, self.speaker(), handshake, from, HelloFlags::default());
                if let Ok(frame) = wire::encode(&Message::Bye(reason.to_string())) {
                    io.send(Packet {
                        peer: from,
                        channel: Channel::Reliable,
                        bytes: frame,
                    });
                }
            }
            reject(from, link, reason, &mut self.rejected);
            return HelloOutcome::Refused;
        }
        handshake.ours_heard |= hello.heard;
        if hello.waiting && handshake.may_answer(now) {
            let flags = HelloFlags {
                heard: handshake.theirs.is_some(),
                waiting: !handshake.ours_heard,
                fresh: handshake.fresh(&mut self.fresh, from),
            };
            send_hello(io, self.speaker(), handshake, from, flags);
            handshake.sent(now);
            handshake.last_answer = Some(now);
        }
        HelloOutcome::Taken
    }

    /// Ends the older link `entity` (to `peer`) of `replica`, which proved itself on a
    /// newer one: told why, refused, and left if it had joined.
    fn replace_link(
        &mut self,
        entity: Entity,
        peer: PeerId,
        replica: ReplicaId,
        was_connected: bool,
        io: &mut TransportIo,
    ) {
        let reason = RejectReason::ReplicaConnected(replica);
        warn!("ending the older link to peer `{peer}`: {reason}");
        if let Ok(frame) = wire::encode(&Message::Bye(reason.to_string())) {
            io.send(Packet {
                peer,
                channel: Channel::Reliable,
                bytes: frame,
            });
        }
        self.commands
            .entity(entity)
            .insert(PeerLink::Rejected(reason.clone()))
            .remove::<PeerReplica>();
        self.rejected.write(PeerRejected { peer, reason });
        if was_connected {
            self.left.write(PeerLeft {
                peer,
                replica: Some(replica),
                was_connected,
            });
        }
    }

    /// The checks of a link's first hello: a replica that is its key's, and our
    /// registered types.
    fn check_first(&self, hello: &Hello) -> Result<(), RejectReason> {
        if !ReplicaId(hello.replica).is_valid() {
            return Err(RejectReason::Malformed("replica id past 2^53 - 1".into()));
        }
        if identity::replica_of(&hello.key) != ReplicaId(hello.replica) {
            return Err(RejectReason::Malformed(
                "its replica id is not its key's".into(),
            ));
        }
        check_hello(&self.registry, hello)
    }

    /// A datagram that did not decode: a first one of another protocol version
    /// refuses the peer, naming both versions.
    pub(crate) fn on_bad_datagram(
        &mut self,
        packet: &Packet,
        error: &DecodeError,
        link: &mut PeerLink,
    ) {
        if *link == PeerLink::Handshaking
            && packet.channel == Channel::Reliable
            && let DecodeError::Version { got } = *error
        {
            let reason = RejectReason::ProtocolVersion {
                ours: PROTOCOL_VERSION,
                theirs: got,
            };
            reject(packet.peer, link, reason, &mut self.rejected);
        }
    }

    /// Ends the link to `from` for `reason`, at any stage: nothing more is taken from
    /// it, and a connected peer also leaves (the routes forget it as if it had gone;
    /// its entity stays, [`PeerLink::Rejected`], until the transport closes the link).
    pub(crate) fn end_link(
        &mut self,
        from: PeerId,
        entity: Entity,
        link: &mut PeerLink,
        replica: Option<ReplicaId>,
        reason: RejectReason,
    ) {
        let was_connected = *link == PeerLink::Connected;
        if let Some(replica) = replica
            && self.replicas.0.get(&replica).map(|(e, _)| *e) == Some(entity)
        {
            self.replicas.0.remove(&replica);
        }
        reject(from, link, reason, &mut self.rejected);
        if was_connected {
            self.commands.entity(entity).remove::<PeerReplica>();
            self.left.write(PeerLeft {
                peer: from,
                replica,
                was_connected,
            });
        }
    }

    /// Makes the link [`PeerLink::Connected`] once both sides have each other's hello.
    pub(crate) fn join_if_ready(
        &mut self,
        from: PeerId,
        entity: Entity,
        link: &mut PeerLink,
        handshake: &Handshake,
    ) {
        if *link == PeerLink::Handshaking
            && handshake.ours_heard
            && let Some(replica) = handshake.theirs
        {
            debug!("peer `{from}` joined");
            *link = PeerLink::Connected;
            self.commands.entity(entity).insert(PeerReplica(replica));
            self.joined.write(PeerJoined {
                peer: from,
                replica,
                entity,
            });
        }
    }
}

fn check_hello(registry: &SyncRegistry, hello: &Hello) -> Result<(), RejectReason> {
    let ours = registry.schema_strings();
    if crate::registry::schema_hash(&hello.schema) != hello.schema_hash {
        return Err(RejectReason::Malformed(
            "schema hash does not match its schema".into(),
        ));
    }
    if hello.schema_hash == crate::registry::schema_hash(&ours) && hello.schema == ours {
        return Ok(());
    }
    let differs = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .enumerate()
            .filter(|(i, e)| b.get(*i) != Some(*e))
            .map(|(_, e)| e.clone())
            .collect()
    };
    Err(RejectReason::Schema {
        only_ours: differs(&ours, &hello.schema),
        only_theirs: differs(&hello.schema, &ours),
    })
}

fn reject(
    peer: PeerId,
    link: &mut PeerLink,
    reason: RejectReason,
    rejected: &mut MessageWriter<PeerRejected>,
) {
    warn!("refusing peer `{peer}`: {reason}");
    *link = PeerLink::Rejected(reason.clone());
    rejected.write(PeerRejected { peer, reason });
}

/// Sends our hello to new peers, and again to peers not known to have it (see
/// [`Handshake`]).
pub(crate) fn repeat_hellos(
    time: Res<Time<Real>>,
    mut io: ResMut<TransportIo>,
    (registry, local, config): (Res<SyncRegistry>, Res<LocalPeer>, Res<super::SessionConfig>),
    mut fresh_docs: ResMut<FreshJoin>,
    mut peers: Query<(&Peer, &mut PeerLink, &mut super::Inbound)>,
    mut rejected: MessageWriter<PeerRejected>,
) {
    let now = time.elapsed();
    for (peer, mut link, mut inbound) in &mut peers {
        let handshake = &mut inbound.handshake;
        if matches!(*link, PeerLink::Rejected(_)) {
            continue;
        }
        // A link that never proves itself is not kept open (a stranger's parked
        // links, a peer that went silent mid-handshake).
        if *link == PeerLink::Handshaking
            && handshake
                .started
                .is_some_and(|at| now.saturating_sub(at) >= HANDSHAKE_TIMEOUT)
        {
            reject(
                peer.id,
                &mut link,
                RejectReason::HandshakeTimeout,
                &mut rejected,
            );
            continue;
        }
        if !handshake.due(now) {
            continue;
        }
        debug!("hello to peer `{}`", peer.id);
        let flags = HelloFlags {
            heard: handshake.theirs.is_some(),
            waiting: true,
            fresh: handshake.fresh(&mut fresh_docs, peer.id),
        };
        let speaker = Speaker {
            local: &local,
            registry: &registry,
            secret: config.room_secret.as_ref(),
        };
        send_hello(&mut io, speaker, handshake, peer.id, flags);
        handshake.sent(now);
    }
}
