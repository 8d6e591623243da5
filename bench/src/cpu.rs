//! CPU time spent by the worker, PostgreSQL and RabbitMQ over a phase, from `/proc`: what one
//! event costs each of them, which moves before events/s does when a change adds work.

use serde::Serialize;

/// CPU seconds so far of the three parties.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    worker: f64,
    postgres: f64,
    broker: f64,
}

impl Snapshot {
    /// The worker process `worker_pid`, every `postgres` process (with the children they
    /// reaped: backends that ended) and every `beam.smp` (RabbitMQ).
    pub fn take(worker_pid: Option<u32>) -> Self {
        Self {
            worker: worker_pid.and_then(process_seconds).unwrap_or(0.0),
            postgres: seconds_of_all("postgres"),
            broker: seconds_of_all("beam.smp"),
        }
    }

    /// What was spent since `earlier`, per 1,000 of `events`.
    pub fn per_thousand_since(&self, earlier: &Self, events: usize) -> CpuCost {
        let per_thousand = |now: f64, then: f64| (now - then) * 1000.0 / events.max(1) as f64;
        CpuCost {
            worker_s: per_thousand(self.worker, earlier.worker),
            postgres_s: per_thousand(self.postgres, earlier.postgres),
            broker_s: per_thousand(self.broker, earlier.broker),
        }
    }
}

/// CPU seconds per 1,000 events.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuCost {
    pub worker_s: f64,
    pub postgres_s: f64,
    pub broker_s: f64,
}

/// User and system time of one process, its reaped children included.
fn process_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let ticks: f64 = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    Some(ticks / clock_ticks_per_second())
}

/// The CPU seconds of every process whose command name is `name`.
fn seconds_of_all(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .filter_map(process_seconds)
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_spent_some_cpu_and_a_busy_loop_adds_to_it() {
        let pid = std::process::id();
        let before = process_seconds(pid).unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let after = process_seconds(pid).unwrap();
        assert!(after - before > 0.05, "{before} -> {after}");
    }
}
