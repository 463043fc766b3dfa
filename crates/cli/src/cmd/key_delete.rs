//! `nekms key delete|cancel-deletion` and the listing's view of damaged and
//! pending records: deletion is scheduled as KMS schedules a key's (7-30
//! days, 30 by default), a record pending deletion signs nothing, and
//! `--now` (confirmed, or `--yes`) deletes at once.

use std::io::{BufRead, IsTerminal, Write};

use nekms_store::{rfc3339, KeyStore, Page, Store};

use crate::exit::{not_found, usage};

/// Schedule `name`'s deletion in `days`, or delete it `now`.
pub async fn delete(store: &Store, name: &str, now: bool, yes: bool, days: u32) -> anyhow::Result<()> {
    if now {
        // Without reading the record first: a damaged one can be deleted too.
        if !yes {
            confirm(name)?;
        }
        if !store.delete(name).await? {
            return Err(not_found(format!("no key named {name:?} in the store")));
        }
        println!("deleted {name} now: its record is gone, and with it the key unless another copy of the record exists");
        return Ok(());
    }
    let Some((_, pending)) = store.entry(name).await? else {
        return Err(not_found(format!("no key named {name:?} in the store")));
    };
    if !(7..=30).contains(&days) {
        return Err(usage(format!("--pending-days {days}: a deletion waits 7 to 30 days, as KMS's does (--now deletes at once)")));
    }
    if let Some(at) = pending {
        println!("{name} is already scheduled for deletion at {}", rfc3339(at));
        return Ok(());
    }
    let at = nekms_store::now() + u64::from(days) * 86_400;
    if !store.set_deletion(name, Some(at)).await? {
        return Err(not_found(format!("no key named {name:?} in the store")));
    }
    println!(
        "{name} is scheduled for deletion at {} ({days} days); it signs nothing meanwhile, and `nekms key cancel-deletion {name}` keeps it",
        rfc3339(at)
    );
    Ok(())
}

/// Cancel `name`'s scheduled deletion.
pub async fn cancel(store: &Store, name: &str) -> anyhow::Result<()> {
    match store.entry(name).await? {
        None => Err(not_found(format!("no key named {name:?} in the store (a deletion past its date cannot be cancelled)"))),
        Some((_, None)) => {
            println!("{name} is not scheduled for deletion");
            Ok(())
        }
        Some((_, Some(_))) => {
            store.set_deletion(name, None).await?;
            println!("{name} is no longer scheduled for deletion and signs again");
            Ok(())
        }
    }
}

/// `--now` without `--yes`: the name typed again on a terminal.
fn confirm(name: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(usage("--now deletes the record at once, for good: give --yes as well, or run it in a terminal to confirm"));
    }
    eprint!("delete {name} now, for good? Type its name to confirm: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim_end() != name {
        return Err(usage("not confirmed; nothing was deleted"));
    }
    Ok(())
}

/// A page's damaged items and pending deletions, as `key list` prints them.
pub fn annotate(page: &Page, summary: &mut serde_json::Value) {
    let id = summary["key_id"].as_str().unwrap_or_default().to_owned();
    if let Some(at) = page.pending_deletion.get(&id) {
        summary["pending_deletion"] = serde_json::json!(rfc3339(*at));
    }
}
