//! Damage found on the way (a damaged index file or snapshot record that is skipped) is said
//! once per process, where the user will see it: on stderr for commands, in the log for a mount.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

type Sink = Box<dyn Fn(&str) + Send + Sync>;

pub struct Warnings {
    sink: RwLock<Sink>,
    said: Mutex<HashSet<String>>,
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings {
            sink: RwLock::new(Box::new(|line| crate::tell!("phonebak: warning: {line}"))),
            said: Mutex::default(),
        }
    }
}

impl Warnings {
    /// Says `line` unless it was said before.
    pub fn warn(&self, line: &str) {
        if self.said.lock().expect("warnings lock").insert(line.to_string()) {
            (self.sink.read().expect("warnings lock"))(line);
        }
    }

    /// Where warnings go from now on (the mount's log).
    pub fn send_to(&self, sink: Sink) {
        *self.sink.write().expect("warnings lock") = sink;
    }
}
