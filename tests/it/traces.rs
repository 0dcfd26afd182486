//! Real editing traces replayed through the shared document and the in-memory
//! transport: the B4 paper trace from one peer, and a concurrent two-author trace
//! with each author as a peer.

use crate::support::traces;

use std::collections::HashSet;

use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bevy_peer_sync::yrs::updates::decoder::Decode;
use bevy_peer_sync::yrs::{Doc, ReadTxn, Text, Transact, Update};

/// Patches per frame: one transaction per frame on the editing peer.
const PATCHES_PER_FRAME: usize = 1_000;

#[test]
fn b4_trace_replays_to_its_end_content_on_a_second_peer() {
    let trace = traces::load_sequential("automerge-paper.json.gz");
    let mut room = TestRoom::new(11);
    let a = room.add_peer(|_| {});
    let b = room.add_peer(|_| {});
    assert!(room.step_until(5, TestRoom::fully_connected));

    let patches: Vec<_> = trace.txns.into_iter().flatten().collect();
    for chunk in patches.chunks(PATCHES_PER_FRAME) {
        {
            let doc = room.app(a).world().resource::<SharedDoc>();
            let text = doc.text("paper");
            let mut txn = doc.transact_mut();
            for (pos, del, ins) in chunk {
                if *del > 0 {
                    text.remove_range(&mut txn, *pos as u32, *del as u32);
                }
                if !ins.is_empty() {
                    text.insert(&mut txn, *pos as u32, ins);
                }
            }
        }
        room.step();
    }
    room.step_n(3);
    for peer in [a, b] {
        let content = room
            .app(peer)
            .world()
            .resource::<SharedDoc>()
            .text_string("paper");
        assert_eq!(content.len(), trace.end_content.len(), "peer {peer}");
        assert!(
            content == trace.end_content,
            "peer {peer} differs from endContent"
        );
    }
}

#[test]
fn concurrent_trace_replays_with_each_author_as_a_peer() {
    let trace = traces::load_concurrent("friendsforever.json.gz");
    assert_eq!(trace.num_agents, 2);
    let mut room = TestRoom::new(12);
    room.network
        .set_default_conditioner(bevy_peer_sync::net::transport::memory::LinkConditioner {
            latency: std::time::Duration::from_millis(60),
            jitter: std::time::Duration::from_millis(30),
            loss: 0.1,
            ..Default::default()
        });
    let peers = [room.add_peer(|_| {}), room.add_peer(|_| {})];
    assert!(room.step_until(60, TestRoom::fully_connected));

    // Each author edits a private view holding exactly the versions its parents name,
    // so the trace's positions apply; the resulting yrs update is then a local edit on
    // that author's peer, which sends it over the transport like any other.
    // (With the peer's own client id: a live update may carry no other's blocks.)
    let views: Vec<Doc> = peers
        .iter()
        .map(|&peer| {
            Doc::with_client_id(bevy_peer_sync::internals::writes_as(
                room.app(peer).world(),
                0,
            ))
        })
        .collect();
    let mut seen: Vec<HashSet<usize>> = vec![HashSet::new(); 2];
    let mut updates: Vec<Vec<u8>> = Vec::with_capacity(trace.txns.len());
    for (index, txn) in trace.txns.iter().enumerate() {
        let agent = txn.agent;
        // Bring in the other author's transactions the parents depend on.
        let mut missing = Vec::new();
        let mut stack: Vec<usize> = txn.parents.clone();
        while let Some(t) = stack.pop() {
            if seen[agent].insert(t) {
                missing.push(t);
                stack.extend(trace.txns[t].parents.iter().copied());
            }
        }
        missing.sort_unstable();
        let view = &views[agent];
        let text = view.get_or_insert_text("note");
        {
            let mut view_txn = view.transact_mut();
            for t in missing {
                if trace.txns[t].agent != agent {
                    view_txn
                        .apply_update(Update::decode_v1(&updates[t]).unwrap())
                        .unwrap();
                }
            }
        }
        let before = view.transact().state_vector();
        {
            let mut view_txn = view.transact_mut();
            for (pos, del, ins) in &txn.patches {
                if *del > 0 {
                    text.remove_range(&mut view_txn, *pos as u32, *del as u32);
                }
                if !ins.is_empty() {
                    text.insert(&mut view_txn, *pos as u32, ins);
                }
            }
        }
        seen[agent].insert(index);
        let update = view.transact().encode_diff_v1(&before);
        // The author types on what it has received: wait until the other author's
        // edits this one depends on have crossed the network to its peer.
        let mut waited = 0;
        loop {
            let have = room
                .app(peers[agent])
                .world()
                .resource::<SharedDoc>()
                .state_vector();
            if before
                .iter()
                .all(|(client, clock)| have.get(client) >= *clock)
            {
                break;
            }
            waited += 1;
            assert!(waited < 1_000, "dependencies of txn {index} never arrived");
            room.step();
        }
        {
            let doc = room.app(peers[agent]).world().resource::<SharedDoc>();
            doc.transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
        }
        updates.push(update);
        if index % 100 == 99 {
            room.step();
        }
    }
    room.step_n(120);
    for peer in peers {
        let content = room
            .app(peer)
            .world()
            .resource::<SharedDoc>()
            .text_string("note");
        assert!(
            content == trace.end_content,
            "peer {peer} differs from endContent ({} vs {} bytes)",
            content.len(),
            trace.end_content.len()
        );
    }
}
