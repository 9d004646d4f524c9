//! Watches input devices for the ACPI power button (KEY_POWER) and turns a press into SIGTERM for
//! PID 1, the same path as `kill -TERM 1`. Without this nothing in the guest reacts to
//! `gcloud compute instances stop` or QEMU's `system_powerdown`.

use std::io::Read;
use std::path::PathBuf;

use sealroom_measurements::reader::Reader;

use super::log;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit Linux: 16-byte timeval, type, code, value.
const EVENT_SIZE: usize = 24;

/// True when `event` (one `struct input_event`) is a press of the power key.
pub fn is_power_press(event: &[u8]) -> bool {
    let mut r = Reader::new(event);
    let parsed = (|| {
        r.skip(16, "timeval")?;
        let kind = r.u16_le("type")?;
        let code = r.u16_le("code")?;
        let value = r.u32_le("value")?;
        r.finish("input_event")?;
        Ok::<_, sealroom_measurements::reader::ReadError>(kind == EV_KEY && code == KEY_POWER && value == 1)
    })();
    parsed.unwrap_or(false)
}

/// Starts one watcher thread per `/dev/input/event*` device present now.
pub fn watch_power_button() {
    // The device nodes appear when the button and evdev modules bind; give them a moment.
    let mut devices = event_devices();
    for _ in 0..20 {
        if !devices.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        devices = event_devices();
    }
    if devices.is_empty() {
        log!("power: no input devices; power button ignored");
    } else {
        log!("power: watching {} input device(s) for the power button", devices.len());
    }
    for dev in devices {
        let spawned = std::thread::Builder::new().name("power-button".into()).spawn(move || {
            let Ok(mut file) = std::fs::File::open(&dev) else { return };
            let mut event = [0u8; EVENT_SIZE];
            while file.read_exact(&mut event).is_ok() {
                if is_power_press(&event) {
                    log!("power: power button pressed ({})", dev.display());
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(1),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        });
        if let Err(e) = spawned {
            log!("power: cannot watch input devices: {e}");
        }
    }
}

fn event_devices() -> Vec<PathBuf> {
    std::fs::read_dir("/dev/input")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("event")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: u32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&kind.to_le_bytes());
        e.extend_from_slice(&code.to_le_bytes());
        e.extend_from_slice(&value.to_le_bytes());
        e
    }

    #[test]
    fn recognises_the_power_key_press_only() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
        assert!(!is_power_press(&event(EV_KEY, 30, 1)));
        assert!(!is_power_press(&event(0, 0, 0)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 1)[..20]));
    }
}
