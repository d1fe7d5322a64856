//! Virtual instructions: the `#GP` decoded, the call decoded once (`ViCall`), the handlers, and the one place that writes `rax` or stops the guest.

use super::*;
use hypercall_abi::vi::VirtualInterrupts;

/// Reads the bytes at `rip` in the guest's memory that are readable, up to one instruction's
/// worth, into `bytes`; returns how many there are.
#[inline(always)]
pub(super) fn instruction_at<'b>(guest: &Guest, rip: u64, bytes: &'b mut [u8; MAX_INSTRUCTION_LEN]) -> &'b [u8] {
    let Some(space) = guest.space.as_ref() else { return &[] };
    let readable = readable_prefix(&space.map, rip, MAX_INSTRUCTION_LEN as u64, Access::READ) as usize;
    let Some(prefix) = bytes.get_mut(..readable) else { return &[] };
    if let Ok(slice) = UserSlice::new(rip, readable as u64).validate(&space.map, Access::READ) {
        space.read(slice, prefix);
    }
    prefix
}

/// `out dx, al` and `out dx, eax`: one byte each, the form every virtual instruction takes.
const OUT_DX: [u8; 2] = [0xEE, 0xEF];

pub(super) fn general_protection(g: &mut Guests, id: GuestId, frame: &mut TrapFrame, now: u64) -> Action {
    // The fast path: a one-byte `out dx` to a virtual-instruction port needs neither the memory
    // map's checks nor a page walk nor the decoder (each of those is for any other instruction).
    let pml4 = at(&g.list, id).space.as_ref().map(|space| space.pml4_phys());
    let opcode = pml4.and_then(|pml4| crate::arch::cpu::trapping_opcode_byte(frame.rip, pml4));
    let port = frame.rdx as u16;
    if opcode.is_some_and(|byte| OUT_DX.contains(&byte)) && vi::is_vi_port(port) {
        frame.rip = frame.rip.wrapping_add(1); // a user address plus one
        return virtual_instruction(g, id, port, frame, now);
    }
    let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
    match decode_gp(instruction_at(at(&g.list, id), frame.rip, &mut bytes)) {
        Ok(GpInstruction::PortIo(io)) => {
            let port = match io.port {
                PortOperand::Dx => frame.rdx as u16,
                PortOperand::Imm(port) => u16::from(port),
            };
            match (io.direction, io.port) {
                (Direction::Out, PortOperand::Dx) if vi::is_vi_port(port) => {
                    frame.rip = frame.rip.wrapping_add(io.len as u64); // a user address plus at most 15
                    virtual_instruction(g, id, port, frame, now)
                }
                (Direction::Out, _) if vi::is_vi_port(port) => Action::Stop(GuestFault::ViNotDxForm { port }),
                (Direction::Out, _) => Action::Stop(GuestFault::PortOutsideRange { port }),
                (Direction::In, _) => Action::Stop(GuestFault::PortRead { port }),
            }
        }
        Ok(GpInstruction::StringIo) => Action::Stop(GuestFault::StringIo),
        Ok(GpInstruction::Privileged(p)) => Action::Stop(GuestFault::Privileged(p)),
        Ok(GpInstruction::Other) => Action::Stop(GuestFault::GeneralProtection { error_code: frame.error_code }),
        Err(e) => Action::Stop(GuestFault::InstructionUnreadable(e)),
    }
}

/// Decodes the virtual instruction once, runs its handler, and writes its result: the one place
/// that sets `rax` or stops the guest for a virtual instruction.
pub(super) fn virtual_instruction(g: &mut Guests, id: GuestId, port: u16, frame: &mut TrapFrame, now: u64) -> Action {
    g.counters.virtual_instructions = g.counters.virtual_instructions.saturating_add(1);
    let guest = at_mut(&mut g.list, id);
    guest.virtual_instructions = guest.virtual_instructions.saturating_add(1);
    let outcome =
        ViCall::decode(port, frame.rdi, frame.rsi).map_err(ViFailure::Error).and_then(|call| run_vi(g, id, call, now));
    match outcome {
        Ok((value, action)) => {
            frame.rax = value;
            action
        }
        Err(ViFailure::Error(error)) => {
            frame.rax = error.code() as u64;
            Action::Resume
        }
        Err(ViFailure::Stop(cause)) => Action::Stop(cause),
    }
}

/// Guest `id`'s vNIC, if it has one.
fn vnic_of(g: &Guests, id: GuestId) -> Option<&crate::vnet::GuestNic> {
    g.nics.get(id).and_then(Option::as_ref)
}

/// The handlers: the value for `rax` and what happens to the guest next.
pub(super) fn run_vi(g: &mut Guests, id: GuestId, call: ViCall, now: u64) -> Result<(u64, Action), ViFailure> {
    let no_nic = ViFailure::Error(vi::Error::Unsupported);
    if g.net.stamps.on() {
        use kernel_core::vnet::timeline::Activity;
        g.net.timeline.refine(match call {
            ViCall::VnicTxKick => Activity::Kick,
            ViCall::IdleUntil { .. } => Activity::Idle,
            _ => Activity::OtherVi,
        });
    }
    Ok(match call {
        ViCall::ConsoleWrite { addr, len } => (console_write(g, id, addr, len)?, Action::Resume),
        ViCall::Exit { code } => (0, Action::Exit(code)),
        ViCall::Yield => {
            // Like an idle, a yield hands over the tx descriptors produced so far.
            take_produced_tx(g, id);
            (0, Action::Preempt)
        }
        ViCall::IdleUntil { deadline } => {
            // Idling hands over what the guest produced: its tx descriptors are taken as a
            // kick would (so an echo costs one virtual instruction, not a kick and an idle),
            // and frames held for want of a buffer go into the ones it reposted. The completion
            // that take raises does not end the idle, unless the guest idled for want of a slot.
            let before = vnic_of(g, id).map(|nic| (nic.virq(), nic.tx_ring_full()));
            take_produced_tx(g, id);
            g.net_ctx().deliver_held(id); // returns at once when none are held
                                          // A virtual interrupt raised since the guest last looked ends the idle at once.
            let pending = match (vnic_of(g, id).map(crate::vnet::GuestNic::virq), before) {
                (Some(now), Some((_, true))) => now,
                (Some(now), Some((earlier, false))) => (now & !VirtualInterrupts::TX_DONE) | earlier,
                _ => 0,
            };
            let action = match deadline {
                _ if pending != 0 => Action::Resume,
                None => Action::Idle(None),
                Some(deadline) if deadline <= now => {
                    let guest = at_mut(&mut g.list, id);
                    guest.idles_already_due = guest.idles_already_due.saturating_add(1);
                    Action::Resume
                }
                Some(deadline) => Action::Idle(Some(deadline)),
            };
            (pending, action)
        }
        ViCall::Null => (0, Action::Resume),
        ViCall::VnicTxKick => {
            vnic_of(g, id).ok_or(no_nic)?;
            // Doorbell to NIC notify, for kicks that carried exactly one packet (stamping on).
            let stamps = g.net.stamps;
            let start = stamps.now();
            let taken = g.net_ctx().tx_kick(id);
            g.net_ctx().deliver_held(id); // returns at once when none are held
            if stamps.on() && taken == 1 && g.kick_samples.len() < g.kick_samples.capacity() {
                g.kick_samples.push(stamps.now().saturating_sub(start) as u32);
            }
            (taken, Action::Resume)
        }
        ViCall::VnicRxPosted => {
            vnic_of(g, id).ok_or(no_nic)?;
            g.net_ctx().deliver_held(id);
            (u64::from(vnic_of(g, id).map_or(0, crate::vnet::GuestNic::rx_posted)), Action::Resume)
        }
    })
}

/// Takes the tx descriptors guest `id` produced, as its kick would, if there are any: idling
/// and yielding hand the ring over so that the guest need not kick as well.
fn take_produced_tx(g: &mut Guests, id: GuestId) {
    if vnic_of(g, id).is_some_and(crate::vnet::GuestNic::tx_produced) {
        g.net_ctx().tx_kick(id);
    }
}

/// Writes the guest's `len` bytes at `addr` (already bounded by the decoder) to its console
/// line; returns the bytes written.
pub(super) fn console_write(g: &mut Guests, id: GuestId, addr: u64, len: u64) -> Result<u64, ViFailure> {
    let guest = at_mut(&mut g.list, id);
    let space = space_of(guest);
    let slice = match UserSlice::new(addr, len).validate(&space.map, Access::READ) {
        Ok(slice) => slice,
        Err(bad) => return Err(ViFailure::Stop(GuestFault::BadPointer { call: "console_write", bad })),
    };
    let mut buf = [0u8; MAX_CONSOLE_WRITE as usize];
    let text = buf.get_mut(..len as usize).ok_or(ViFailure::Error(vi::Error::BadLength))?;
    space.read(slice, text);
    // The line buffer's storage, once (cleared lines keep it): a short kernel heap refuses
    // the write instead of failing an allocation.
    let room = guest.console.capacity() >= CONSOLE_LINE_MAX
        || (crate::mm::heap::room_for_guest_growth()
            && guest.console.try_reserve_exact(CONSOLE_LINE_MAX.saturating_sub(guest.console.len())).is_ok());
    if !room {
        g.counters.console_writes_refused = g.counters.console_writes_refused.saturating_add(1);
        return Err(ViFailure::Error(vi::Error::NoMemory));
    }
    for &byte in &*text {
        if byte == b'\n' {
            flush_console(id, guest, false);
        } else {
            guest.console.push(byte);
            if guest.console.len() >= CONSOLE_LINE_MAX {
                flush_console(id, guest, false);
            }
        }
    }
    Ok(len)
}
