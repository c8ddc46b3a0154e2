//! The `log` facade's backend: one line per record on the serial console.
//!
//! Nothing is logged at the default level (`warn`) during a normal boot, so the app's first
//! line is the first thing on the console and boot pays for no formatting.

use crate::serial;
use log::{LevelFilter, Log, Metadata, Record};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            serial::print(format_args!(
                "[{:<5} {}] {}\n",
                record.level(),
                record.target(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

/// Installs the serial logger at `level`.
pub fn init(level: LevelFilter) {
    // Fails only if a logger is already set, which only this function does.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
