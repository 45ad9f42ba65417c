//! Where keys come from — a ListObjectsV2 listing (sequential, or parallel over key ranges),
//! a `--keys-from` file, an S3 Inventory (`--manifest`) — and which of them are admitted:
//! under the prefix, selected (`--include`/`--exclude`, `--shard`), not archived, a safe
//! path ([`crate::keymap`]), not the same file as a key before it on a DEST that does not
//! tell case apart ([`crate::keymap::CaseGuard`]), not already at DEST ([`crate::existing`]).
//! Admitted keys go into the key queue a page at a time ([`crate::queue`]).

pub mod inventory;
mod keys_file;
pub mod listing;

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::error::Fatal;
use crate::existing::Existing;
use crate::keymap::{CaseGuard, map_key};
use crate::queue::{Listed, Room};
use crate::report::Report;
use crate::report::stats::Stage;
use crate::s3;
use crate::stop::Stop;

/// Lists the source into the queue (list requests through `lists`; an inventory's files
/// through the SDK's `client`). Returns an error only if the first page failed.
pub async fn list(
    cfg: &Config,
    client: &aws_sdk_s3::Client,
    lists: &Arc<dyn s3::ListObjects>,
    (keys, room): (&async_channel::Sender<Listed>, &Room),
    report: &Arc<Report>,
    mut stop: Stop,
    (mut existing, mut case): (Option<Existing>, Option<CaseGuard>),
) -> Result<(), Fatal> {
    let prefix = &cfg.source.prefix;
    if let Some(single) = &cfg.single {
        report.listed(1);
        match map_key(&single.name) {
            Ok(target) => {
                let item = Listed {
                    key: single.key.clone(),
                    size: single.size,
                    last_modified: single.last_modified,
                    etag: None,
                    target,
                    listed_at: Instant::now(),
                };
                let _ = keys.send(item).await;
            }
            Err(refused) => report.fail(&single.key, &format!("cannot write it as '{}': {refused}", single.name)),
        }
        return Ok(());
    }
    let mut lister = match (&cfg.keys_from, &cfg.manifest) {
        (Some(path), _) => Pages::Keys(keys_file::read_keys(path).map_err(Fatal::Setup)?),
        (None, Some(location)) => {
            let manifest = crate::source::inventory::Manifest::open(location.clone(), client, &cfg.source.bucket)
                .await
                .map_err(Fatal::Setup)?;
            Pages::Keys(manifest.start(client.clone(), prefix.clone(), report.clone()))
        }
        (None, None) if cfg.list_workers > 1 => Pages::Keys(crate::source::listing::start(
            lists.clone(),
            cfg.source.bucket.clone(),
            cfg.source.prefix.clone(),
            cfg.list_workers,
            report.clone(),
            {
                let keys = keys.clone();
                Box::new(move || keys.len() < keys.capacity().unwrap_or(usize::MAX) / 2)
            },
            cfg.s3.requester_pays,
        )),
        (None, None) => Pages::Listing(listing::Lister::new(lists.clone(), &cfg.source, cfg.s3.requester_pays)),
    };
    let mut rec = report.recorder();
    let mut first = true;
    let mut seen = 0u64;
    // One stop waiter for the whole listing: a waiter made per select registered in (and
    // removed from) the stop channel's shared list for every key sent.
    let stopping = stop.requested_wait();
    tokio::pin!(stopping);
    loop {
        let asked = Instant::now();
        let page = tokio::select! {
            () = &mut stopping => return Ok(()),
            page = lister.next_page() => page,
        };
        let Some(page) = page else { break };
        let listed_at = Instant::now();
        if matches!(lister, Pages::Listing(_)) {
            // Parallel listers record their own requests.
            rec.record(Stage::List, listed_at - asked);
        }
        let objects = match page {
            Ok(o) => o,
            Err(reason) if first => return Err(Fatal::Setup(reason)),
            Err(reason) => {
                report.listing_incomplete(&format!("listing stopped after {seen} keys: {reason}"));
                return Ok(());
            }
        };
        first = false;
        seen += objects.len() as u64;
        let objects: Vec<s3::ListedObject> = if cfg.selection.is_everything() {
            objects
        } else {
            let total = objects.len();
            let kept: Vec<_> = objects
                .into_iter()
                .filter(|o| cfg.selection.selects(&o.key, o.key.strip_prefix(prefix.as_str()).unwrap_or(&o.key)))
                .collect();
            report.excluded((total - kept.len()) as u64);
            kept
        };
        report.listed(objects.len() as u64);
        let mut items = Vec::with_capacity(objects.len());
        for o in objects {
            let Some(rel) = o.key.strip_prefix(prefix.as_str()) else {
                report.fail(&o.key, &format!("not under the source prefix '{prefix}'"));
                continue;
            };
            if rel.is_empty() {
                // The prefix's own folder marker: DEST itself.
                report.dir_done();
                continue;
            }
            if let Some(class) = &o.archived {
                report.archived(&o.key, class);
                continue;
            }
            match map_key(rel) {
                Ok(target) => {
                    if let Some(Err(reason)) = case.as_mut().map(|c| c.admit(&target)) {
                        report.fail(&o.key, &reason);
                        continue;
                    }
                    let (key, size, last_modified, etag) = (o.key, o.size, o.last_modified, o.etag);
                    items.push(Listed { key, size, last_modified, etag, target, listed_at })
                }
                Err(refused) => report.fail(&o.key, &refused.to_string()),
            }
        }
        if let Some(ex) = existing.take() {
            // One blocking call per page: no file-system call on a tokio thread.
            let checked = tokio::task::spawn_blocking(move || {
                let mut ex = ex;
                let done: Vec<bool> =
                    items.iter().map(|i| ex.is_done(&i.target, i.size, i.last_modified, i.etag.as_deref())).collect();
                (ex, items, done)
            })
            .await
            .map_err(|e| Fatal::Internal(format!("internal error: {e}")))?;
            let (ex, all, done) = checked;
            existing = Some(ex);
            items = all
                .into_iter()
                .zip(done)
                .filter_map(|(i, d)| {
                    if d {
                        report.skipped();
                        None
                    } else {
                        Some(i)
                    }
                })
                .collect();
        }
        if !items.is_empty() {
            tokio::select! {
                () = &mut stopping => return Ok(()),
                () = room.wait(keys) => {}
            }
        }
        for item in items {
            let sent = tokio::select! {
                () = &mut stopping => return Ok(()),
                sent = keys.send(item) => sent,
            };
            if sent.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Where keys come from: ListObjectsV2 pages, pages of a parallel listing, or `--keys-from`.
enum Pages {
    Listing(listing::Lister),
    Keys(tokio::sync::mpsc::Receiver<Result<Vec<s3::ListedObject>, String>>),
}

impl Pages {
    async fn next_page(&mut self) -> Option<Result<Vec<s3::ListedObject>, String>> {
        match self {
            Pages::Listing(l) => l.next_page().await,
            Pages::Keys(rx) => rx.recv().await,
        }
    }
}
