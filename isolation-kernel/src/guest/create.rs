//! Creating the guests of an image: reading `image.cfg` and the apps from the initrd, building each guest's address space and vNIC, and entering the first one.

use super::*;

/// Kernel heap bytes a new guest may not take: what the guests there are need as they run
/// (console buffers, packet-path records), so that creating guests is refused, counted and
/// named, before an allocation failure could stop the kernel.
pub(super) const KERNEL_HEAP_RESERVE: u64 = 256 * 1024;

/// `rflags` of a guest: interrupts enabled (bit 9), reserved bit 1 set, IOPL 0.
pub(super) const GUEST_RFLAGS: u64 = 0x202;

/// Why the initrd cannot be used (the boot fails with it).
pub enum InitrdError {
    NoConfig,
    Malformed(kernel_core::guest::cpio::CpioError),
    ConfigNotUtf8,
    Config(hypercall_abi::initrd::ConfigError<'static>),
    NoGuests,
    /// The kernel heap cannot hold the table of this many guests.
    KernelHeapTooSmall {
        guests: usize,
        heap_free: u64,
    },
}

impl core::fmt::Display for InitrdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitrdError::NoConfig => write!(f, "initrd has no {CONFIG_FILE}"),
            InitrdError::Malformed(e) => write!(f, "initrd is malformed: {e}"),
            InitrdError::ConfigNotUtf8 => write!(f, "{CONFIG_FILE} is not UTF-8"),
            InitrdError::Config(e) => write!(f, "{CONFIG_FILE}: {e}"),
            InitrdError::NoGuests => write!(f, "{CONFIG_FILE} names no guests"),
            InitrdError::KernelHeapTooSmall { guests, heap_free } => write!(
                f,
                "the kernel heap ({heap_free} bytes free, grown from all free RAM) cannot hold the table of {guests} guests: give the machine more memory"
            ),
        }
    }
}

/// Reads the initrd, loads every guest of the image and runs the first one. Returns only with
/// the reason the initrd cannot be used.
pub fn boot(
    initrd: &'static [u8],
    tsc_hz: u64,
    shutdown_deadline: Option<u64>,
    trap_stack_top: u64,
    tx_mode: kernel_core::boot::cmdline::TxMode,
    stamps: bool,
) -> InitrdError {
    let archive = Archive::new(initrd);
    let config = match archive.find(CONFIG_FILE) {
        Ok(Some(entry)) => entry.data,
        Ok(None) => return InitrdError::NoConfig,
        Err(e) => return InitrdError::Malformed(e),
    };
    let Ok(config) = core::str::from_utf8(config) else {
        return InitrdError::ConfigNotUtf8;
    };
    // Room for every guest record at once (exactly: a vector that doubles would need up to
    // twice the room), or the boot fails naming how many.
    let mut specs: Vec<GuestSpec<'static>> = Vec::new();
    let guest_records = config.lines().filter(|line| line.starts_with("guest\t")).count();
    if specs.try_reserve_exact(guest_records).is_err() {
        return InitrdError::KernelHeapTooSmall { guests: guest_records, heap_free: crate::mm::heap::usage().1 };
    }
    for record in parse_config(config) {
        match record {
            Ok(Record::Image { name }) => log::info!("image `{name}`"),
            Ok(Record::Guest(spec)) => {
                if specs.try_reserve(1).is_err() {
                    return InitrdError::KernelHeapTooSmall {
                        guests: specs.len(),
                        heap_free: crate::mm::heap::usage().1,
                    };
                }
                specs.push(spec);
            }
            Err(e) => return InitrdError::Config(e),
        }
    }
    if specs.is_empty() {
        return InitrdError::NoGuests;
    }

    let max_mtu = specs.iter().filter_map(|s| s.net).map(|n| u64::from(n.mtu)).max();
    // No guest with a NIC: no physical NIC, no packet buffers.
    let physical_nic = max_mtu.and_then(|mtu| crate::drivers::virtio_net::probe(hypercall_abi::vnic::max_frame(mtu)));
    let max_mtu = max_mtu.unwrap_or(0);
    log::info!("transmit path: {tx_mode:?}; largest MTU {max_mtu}");
    let mut network = with_frames(|frames| crate::vnet::Network::new(physical_nic, tx_mode, max_mtu, frames));
    if stamps {
        network.enable_stamps();
        crate::arch::trap::enable_stamping();
        log::info!("per-packet stage stamps on");
    }
    // The per-guest tables, reserved up front and fallibly: an image too big for the heap
    // fails the boot with the reason, not with an allocation failure.
    let count = specs.len();
    let (mut list, mut nics) = (Vec::new(), Vec::new());
    let (mut create_ticks, mut pages, mut kernel_bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut sched = Scheduler::new();
    // Guests of weight w get turns w times as long as a weight-1 guest's.
    sched.set_quantum(crate::arch::clock::quantum_ticks());
    let reserved = list.try_reserve_exact(count).is_ok()
        && nics.try_reserve_exact(count).is_ok()
        && create_ticks.try_reserve_exact(count).is_ok()
        && pages.try_reserve_exact(count).is_ok()
        && kernel_bytes.try_reserve_exact(count).is_ok()
        && network.try_reserve(count)
        && sched.try_reserve(count);
    if !reserved {
        return InitrdError::KernelHeapTooSmall { guests: count, heap_free: crate::mm::heap::usage().1 };
    }
    let mut g = Guests {
        list,
        nics,
        net: network,
        sched,
        running_since: 0,
        on_cpu: None,
        user_state_holder: None,
        counters: Counters::default(),
        shutdown_deadline,
        tsc_hz,
        awaiting_end: specs.iter().filter(|s| expected_to_end(s.expect)).count(),
        some_expected_to_end: specs.iter().any(|s| expected_to_end(s.expect)),
        next_stats_report: 0,
        next_console_poll: 0,
        timer: kernel_core::guest::tickless::TimerPlan::new(),
        timer_limits: crate::arch::clock::timer_limits(),
        last_reported: Default::default(),
        // Benchmark records: room only when stamps are on.
        kick_samples: if stamps { Vec::with_capacity(KICK_SAMPLES) } else { Vec::new() },
    };
    // Every frame a guest takes comes back when it ends: with the apps' shared pages (kept for
    // the run), this and the final `frames_free` account for all of them.
    // (The heap may take frames as the guests are created and run: `heap_frames_grown` counts them.)
    log::info!("frames free before the guests: {}", with_frames(|frames| frames.free_frames()));
    log::info!("heap frames grown before the guests: {}", crate::mm::heap::grown_frames());
    let mut apps: BTreeMap<&str, Result<App, Refusal>> = BTreeMap::new();
    for spec in &specs {
        let id = g.sched.add();
        g.sched.set_weight(id, spec.cpu_weight);
        let app = apps.entry(spec.app).or_insert_with(|| load_app(&archive, spec.app));
        let start = cpu::rdtsc();
        let user_state = UserState::new();
        let user_state_bytes = user_state.as_ref().map_or(0, UserState::heap_bytes);
        let budget_ticks = match spec.cpu_budget_ms {
            0 => Ok(None),
            ms => cpu_budget_ticks(ms, tsc_hz).map(Some).ok_or(Refusal::CpuBudgetOutOfRange { ms }),
        };
        let heap_room = crate::mm::heap::has_room(KERNEL_HEAP_RESERVE);
        let heap_free = crate::mm::heap::usage().1;
        let built = match (app, &budget_ticks) {
            (Ok(_), _) if !heap_room => Err(Refusal::KernelHeapLow { free: heap_free }),
            (Ok(_), _) if user_state.is_none() => Err(Refusal::NoFpuState),
            (Ok(_), Err(e)) => Err(*e),
            (Ok(app), Ok(_)) => with_frames(|frames| {
                let mut loaded =
                    loader::build_guest(id as u32, spec, app, tsc_hz, frames).map_err(Refusal::AddressSpace)?;
                let nic = match spec.net {
                    None => None,
                    Some(config) => match crate::vnet::build_nic(&mut loaded.space, frames, config, stamps) {
                        Ok(mut nic) => {
                            nic.tx = GuestTx::new(RateLimiter::new(&spec.tx_limits, tsc_hz, cpu::rdtsc()));
                            Some(nic)
                        }
                        Err(e) => {
                            loaded.space.release(frames);
                            return Err(Refusal::Vnic(e));
                        }
                    },
                };
                Ok((loaded, nic))
            }),
            (Err(e), _) => Err(*e),
        };
        let built = built.and_then(|(loaded, nic)| match g.net.add_guest(id, nic.as_ref()) {
            Ok(()) => Ok((loaded, nic)),
            Err(e) => {
                with_frames(|frames| loaded.space.release(frames));
                Err(Refusal::Vswitch(e))
            }
        });
        if built.is_err() {
            let _ = g.net.add_guest(id, None);
        }
        let mut guest = Guest {
            name: spec.name.into(),
            frame: TrapFrame::default(),
            user_state: user_state.unwrap_or_default(),
            space: None,
            cpu_ticks: 0,
            virtual_instructions: 0,
            idles_already_due: 0,
            cpu_budget_ms: spec.cpu_budget_ms,
            cpu_budget_ticks: budget_ticks.ok().flatten(),
            expect: spec.expect,
            end: None,
            pages_at_end: None,
            console: Vec::new(),
        };
        match built {
            Ok((loaded, nic)) => {
                let nic_bytes = nic.as_ref().map_or(0, crate::vnet::GuestNic::kernel_bytes);
                g.nics.push(nic);
                create_ticks.push(cpu::rdtsc().saturating_sub(start));
                pages.push(loaded.space.owned_frames());
                kernel_bytes.push(
                    core::mem::size_of::<Guest>()
                        .saturating_add(loaded.space.kernel_bytes())
                        .saturating_add(nic_bytes)
                        .saturating_add(g.net.kernel_bytes_per_guest())
                        .saturating_add(user_state_bytes),
                );
                let selectors = crate::arch::gdt::selectors();
                guest.frame = TrapFrame {
                    rip: loaded.entry,
                    cs: u64::from(selectors.user_code.0),
                    rflags: GUEST_RFLAGS,
                    rsp: STACK_TOP,
                    ss: u64::from(selectors.user_data.0),
                    ..TrapFrame::default()
                };
                guest.space = Some(loaded.space);
                g.counters.guests_created = g.counters.guests_created.saturating_add(1);
            }
            Err(error) => {
                g.nics.push(None);
                if expected_to_end(spec.expect) {
                    g.awaiting_end = g.awaiting_end.saturating_sub(1);
                }
                let end = End::Refused(error);
                console_write_fmt(format_args!("guest {id} {} {end}\n", spec.name));
                guest.end = Some(end);
                g.sched.finish(id);
                g.counters.guests_refused = g.counters.guests_refused.saturating_add(1);
            }
        }
        g.list.push(guest);
    }
    if !create_ticks.is_empty() {
        create_ticks.sort_unstable();
        pages.sort_unstable();
        kernel_bytes.sort_unstable();
        let shared: usize = apps.values().filter_map(|a| a.as_ref().ok()).map(App::shared_frames).sum();
        log::info!(
            "guests: {} created, {} refused; creating one took {} TSC ticks (median); {} private pages per guest (median), {} pages shared; kernel heap {} bytes per guest (median; the guest, its vNIC, address-space and FIFO records, its register state)",
            g.counters.guests_created,
            g.counters.guests_refused,
            median(&create_ticks),
            median(&pages),
            shared,
            median(&kernel_bytes),
        );
    }

    let now = cpu::rdtsc();
    let Some(first) = g.sched.schedule(now) else {
        install_guests(g);
        finish_run("no guest could be started");
    };
    g.running_since = now;
    g.on_cpu = Some(first);
    switch_user_state(&mut g, first);
    let frame = at(&g.list, first).frame;
    space::activate(space_of(at(&g.list, first)).pml4_phys());
    g.arm_timer(now);
    install_guests(g);
    // SAFETY: the trap stack's top is the TSS RSP0 and is unused (we run on the boot stack);
    // the frame is the guest's initial ring-3 context in the address space just activated.
    unsafe { enter_frame(&frame, trap_stack_top) }
}

pub(super) fn load_app(archive: &Archive<'static>, app: &str) -> Result<App, Refusal> {
    let path = format!("{APP_DIR}{app}");
    let loaded = match archive.find(&path) {
        Ok(Some(entry)) => with_frames(|frames| App::load(entry.data, frames)).map_err(Refusal::App),
        Ok(None) => Err(Refusal::AppMissing),
        Err(e) => Err(Refusal::InitrdMalformed(e)),
    };
    if let Err(e) = &loaded {
        log::error!("app `{app}`: {e}");
    }
    loaded
}
