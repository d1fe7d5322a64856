//! Guests' console lines, prefixed with the guest's id and name.

use super::*;

/// Longest console line kept before it is flushed without a newline.
pub(super) const CONSOLE_LINE_MAX: usize = 512;

/// Prints the guest's buffered console line, prefixed with its id and name.
pub(super) fn flush_console(id: GuestId, guest: &mut Guest, only_if_nonempty: bool) {
    if only_if_nonempty && guest.console.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&guest.console);
    log::info!("guest {id} {}: {}", guest.name, text.trim_end_matches('\r'));
    guest.console.clear();
}
