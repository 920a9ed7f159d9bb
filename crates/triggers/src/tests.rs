//! Which triggers keep running across an apply, and how their sources read.

use super::*;
use nubo_core::manifest::parse;

fn manifest(triggers: &str, runtime: &str, attempts: u32) -> Manifest {
    parse(&format!(
        "[app]\nname = \"shop\"\n\n[function.work]\nruntime = \"{runtime}\"\nsource = \"w/\"\n\
         [function.work.retry]\nmax_attempts = {attempts}\n\n[function.other]\nsource = \"o.wasm\"\n\n{triggers}"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn keys(m: &Manifest) -> Vec<(TriggerSpec, Target)> {
    m.triggers
        .iter()
        .map(|t| (t.clone(), target_of(m, t).unwrap()))
        .collect()
}

const CRON: &str =
    "[[trigger.cron]]\nname = \"tick\"\nfunction = \"work\"\nschedule = \"@every 30s\"\n";
const QUEUE: &str = "[[trigger.queue]]\nname = \"jobs\"\nfunction = \"work\"\nqueue = \"jobs\"\n";

#[test]
fn unchanged_triggers_keep_running_and_changed_ones_restart() {
    let before = keys(&manifest(&format!("{CRON}{QUEUE}"), "process", 3));
    // Same triggers, listed in another order: both kept, found at their new places.
    let other = CRON.replace("tick", "tock");
    let two = keys(&manifest(&format!("{CRON}{other}"), "process", 3));
    let swapped = keys(&manifest(&format!("{other}{CRON}"), "process", 3));
    assert_eq!(unchanged(&two, &swapped), vec![Some(1), Some(0)]);
    // The schedule changed: the cron trigger restarts, the queue trigger stays.
    let cron2 = CRON.replace("30s", "60s");
    let after = keys(&manifest(&format!("{cron2}{QUEUE}"), "process", 3));
    assert_eq!(unchanged(&before, &after), vec![None, Some(1)]);
    // The function changed: restart.
    let moved = keys(&manifest(
        &format!("{}{QUEUE}", CRON.replace("\"work\"", "\"other\"")),
        "process",
        3,
    ));
    assert_eq!(unchanged(&before, &moved)[0], None);
    // Renamed: the old one stops, the new one starts.
    let renamed = keys(&manifest(
        &format!("{}{QUEUE}", CRON.replace("\"tick\"", "\"tock\"")),
        "process",
        3,
    ));
    assert_eq!(unchanged(&before, &renamed), vec![None, Some(1)]);
    // The function's delivery settings changed: every trigger of it restarts.
    let retried = keys(&manifest(&format!("{CRON}{QUEUE}"), "process", 7));
    assert_eq!(unchanged(&before, &retried), vec![None, None]);
    let wasm = keys(&manifest(&format!("{CRON}{QUEUE}"), "wasm", 3));
    assert_eq!(unchanged(&before, &wasm), vec![None, None]);
    // Removed entirely.
    assert_eq!(unchanged(&before, &[]), vec![None, None]);
}

#[test]
fn sources_read_as_one_line() {
    let m = manifest(
        "[[trigger.cron]]\nfunction = \"work\"\nschedule = \"*/5 * * * *\"\n\
         [[trigger.queue]]\nfunction = \"work\"\nqueue = \"orders\"\n\
         [[trigger.object]]\nfunction = \"work\"\nbucket = \"uploads\"\nprefix = \"images/\"\nsuffix = \".jpg\"\nevents = [\"created\", \"deleted\"]\n\
         [[trigger.mqtt]]\nfunction = \"work\"\nbroker = \"mqtt://127.0.0.1:1883\"\ntopics = [\"a/#\", \"b/+\"]\n\
         [[trigger.nats]]\nfunction = \"work\"\nsubject = \"orders.>\"\nstream = \"ORDERS\"\n\
         [[trigger.nats]]\nfunction = \"work\"\nsubject = \"events.*\"\n",
        "process",
        3,
    );
    let lines: Vec<String> = m.triggers.iter().map(|t| source_line(&t.source)).collect();
    assert_eq!(
        lines,
        [
            "*/5 * * * * (UTC)",
            "queue orders",
            "uploads/images/*.jpg (created, deleted)",
            "mqtt://127.0.0.1:1883 a/#, b/+",
            "nats://127.0.0.1:4222 orders.> [ORDERS]",
            "nats://127.0.0.1:4222 events.*",
        ]
    );
}

#[test]
fn a_trigger_of_a_missing_function_has_no_target() {
    let mut m = manifest(CRON, "wasm", 3);
    m.functions.remove("work");
    assert!(target_of(&m, &m.triggers[0]).is_none());
}
