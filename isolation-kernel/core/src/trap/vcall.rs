//! A virtual instruction and its arguments, decoded once from the guest's registers (in the
//! spirit of Tock's `Syscall::from_register_arguments`): handlers get typed arguments and never
//! read registers themselves.

use hypercall_abi::vi::{Error, Vi, MAX_CONSOLE_WRITE, NO_DEADLINE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViCall {
    /// `len` bytes at guest address `addr` (`len` at most [`MAX_CONSOLE_WRITE`]).
    ConsoleWrite {
        addr: u64,
        len: u64,
    },
    Exit {
        code: i32,
    },
    Yield,
    /// `None`: until a virtual interrupt.
    IdleUntil {
        deadline: Option<u64>,
    },
    Null,
    VnicTxKick,
    VnicRxPosted,
}

impl ViCall {
    /// The call at `port` with the argument registers `rdi`, `rsi` (and `r10`, unused so far).
    /// Errors are what the guest gets back in `rax`; nothing here stops a guest.
    pub fn decode(port: u16, rdi: u64, rsi: u64) -> Result<ViCall, Error> {
        Ok(match Vi::from_port(port).ok_or(Error::Unsupported)? {
            Vi::ConsoleWrite if rsi > MAX_CONSOLE_WRITE => return Err(Error::BadLength),
            Vi::ConsoleWrite => ViCall::ConsoleWrite { addr: rdi, len: rsi },
            // The low 32 bits, signed: the ABI's exit code.
            Vi::Exit => ViCall::Exit { code: rdi as u32 as i32 },
            Vi::Yield => ViCall::Yield,
            Vi::IdleUntil => ViCall::IdleUntil { deadline: (rdi != NO_DEADLINE).then_some(rdi) },
            Vi::Null => ViCall::Null,
            Vi::VnicTxKick => ViCall::VnicTxKick,
            Vi::VnicRxPosted => ViCall::VnicRxPosted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::vi::PORT_BASE;

    #[test]
    fn every_port_decodes_once_with_its_arguments() {
        assert_eq!(
            ViCall::decode(Vi::ConsoleWrite.port(), 0x1000, 5),
            Ok(ViCall::ConsoleWrite { addr: 0x1000, len: 5 })
        );
        assert_eq!(ViCall::decode(Vi::ConsoleWrite.port(), 0x1000, MAX_CONSOLE_WRITE + 1), Err(Error::BadLength));
        assert_eq!(ViCall::decode(Vi::Exit.port(), 0xffff_ffff_ffff_fffe, 0), Ok(ViCall::Exit { code: -2 }));
        assert_eq!(ViCall::decode(Vi::Exit.port(), 0x1_0000_0007, 0), Ok(ViCall::Exit { code: 7 }));
        assert_eq!(ViCall::decode(Vi::IdleUntil.port(), NO_DEADLINE, 0), Ok(ViCall::IdleUntil { deadline: None }));
        assert_eq!(ViCall::decode(Vi::IdleUntil.port(), 42, 0), Ok(ViCall::IdleUntil { deadline: Some(42) }));
        for vi in Vi::ALL {
            assert!(ViCall::decode(vi.port(), 0, 0).is_ok(), "{vi:?}");
        }
        for port in [PORT_BASE + 7, PORT_BASE + 0x1f, 0, u16::MAX] {
            assert_eq!(ViCall::decode(port, 0, 0), Err(Error::Unsupported), "{port:#x}");
        }
    }
}
