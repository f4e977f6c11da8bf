//! Not Yandex Cloud: what tests make happen to an instance that no API call
//! can — a start the platform fails, a delete that takes its time, a guest
//! that stops or breaks by itself. Set through the `/_sim/instances/…` routes
//! (see `handlers::sim`); the API answers stay in the protos' forms.

use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Knobs {
    /// Instance id → how many of its next `:start` operations fail.
    failing_starts: HashMap<String, u32>,
    /// Instance id → how long its delete operation runs (instead of the
    /// operation time), so it shows DELETING that long.
    delete_times: HashMap<String, Duration>,
}

impl Knobs {
    pub fn fail_starts(&mut self, instance_id: &str, times: u32) {
        self.failing_starts.insert(instance_id.to_string(), times);
    }

    /// Whether this `:start` is one of those that fail (counting it).
    pub fn take_failing_start(&mut self, instance_id: &str) -> bool {
        match self.failing_starts.get_mut(instance_id) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    pub fn hold_delete(&mut self, instance_id: &str, duration: Duration) {
        self.delete_times.insert(instance_id.to_string(), duration);
    }

    pub fn delete_time(&self, instance_id: &str) -> Option<Duration> {
        self.delete_times.get(instance_id).copied()
    }

    /// An instance that is gone takes its knobs with it.
    pub fn forget(&mut self, instance_id: &str) {
        self.failing_starts.remove(instance_id);
        self.delete_times.remove(instance_id);
    }
}
