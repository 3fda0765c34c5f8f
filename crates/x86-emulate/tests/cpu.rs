//! The emulator against the host CPU: small functions written in assembly here are called
//! natively and emulated from their own bytes, on edge values of every width, and the
//! resulting registers and flags (pushfq) must be equal. Only flags the SDM leaves
//! undefined for an instruction (and operand) are masked.
//!
//! Each function takes (a = rdi, b = rsi, flags = rdx, out = rcx): it copies b to rcx (a
//! shift count) and to rdx, a to rax, loads the flags with popfq, runs its body, and stores
//! rdi, rax, rdx, rsi, rcx and the flags (pushfq) to `out`. String instructions work in the
//! rest of `out` (r8), and leave rdi/rsi relative to it (computed with `not` and `lea`,
//! which keep the flags the string instruction set).

use std::arch::global_asm;

use x86_emulate::{
    EmuError, FlatMemory, Machine, NoHooks, RCX, RDI, RDX, RSI, RSP, Registers,
    flags::{AF, CF, OF, PF, SF, STATUS, ZF},
};

/// How many bits of a shift count the CPU uses.
#[derive(Clone, Copy)]
enum Count {
    Cl,
    Imm(u64),
}

/// Which flags the SDM leaves undefined, by kind of instruction.
#[derive(Clone, Copy)]
enum Class {
    /// All six status flags defined (or unchanged).
    Defined,
    /// and/or/xor/test: AF undefined.
    Logic,
    /// shl/shr/sar: AF, OF unless the count is 1, CF for counts of the width or more.
    Shift(Count),
    /// rol/ror: OF unless the count is 1.
    Rotate(Count),
    /// shld/shrd by cl: AF, OF unless the count is 1.
    DoubleShift,
    /// mul/imul: SF ZF AF PF undefined.
    Mul,
    /// div/idiv: all undefined; inputs that would fault are skipped.
    Div { signed: bool },
    /// bsf/bsr: all but ZF undefined. The destination for a zero source is undefined too,
    /// but compared: this crate leaves it unchanged, as the host does.
    BitScan,
    /// tzcnt/lzcnt: OF SF AF PF undefined.
    Count,
    /// bt*: OF SF AF PF undefined.
    BitTest,
}

/// `out`: rdi, rax, rdx, rsi, rcx, the flags, then memory the string instructions use.
const WORDS: usize = 16;

struct Op {
    name: &'static str,
    f: unsafe extern "C" fn(u64, u64, u64, *mut [u64; WORDS]),
    width: u32,
    class: Class,
}

macro_rules! ops {
    ($($name:ident $w:literal $class:expr, $body:literal;)*) => {
        global_asm!(
            ".text",
            $(concat!(
                ".globl ", stringify!($name), "\n.p2align 4\n", stringify!($name), ":\n",
                "mov r8, rcx\nmov rcx, rsi\nmov rax, rdi\npush rdx\npopfq\nmov rdx, rsi\n",
                $body, "\n",
                "pushfq\nmov [r8], rdi\nmov [r8+8], rax\nmov [r8+16], rdx\n",
                "mov [r8+24], rsi\nmov [r8+32], rcx\npop rdi\nmov [r8+40], rdi\nret\n",
            ),)*
            ".globl emu_ops_end\nemu_ops_end:\nret\n",
        );
        unsafe extern "C" {
            $(fn $name(a: u64, b: u64, flags: u64, out: *mut [u64; WORDS]);)*
            fn emu_ops_end();
        }
        const OPS: &[Op] = &[$(Op { name: stringify!($name), f: $name, width: $w, class: $class }),*];
    };
}

use Class::*;

ops! {
    add8 8 Defined, "add dil, sil";
    add16 16 Defined, "add di, si";
    add32 32 Defined, "add edi, esi";
    add64 64 Defined, "add rdi, rsi";
    add_high 8 Defined, "add ah, dh";
    add_imm 64 Defined, "add rdi, -100";
    adc8 8 Defined, "adc dil, sil";
    adc16 16 Defined, "adc di, si";
    adc32 32 Defined, "adc edi, esi";
    adc64 64 Defined, "adc rdi, rsi";
    sub8 8 Defined, "sub dil, sil";
    sub16 16 Defined, "sub di, si";
    sub32 32 Defined, "sub edi, esi";
    sub64 64 Defined, "sub rdi, rsi";
    sbb8 8 Defined, "sbb dil, sil";
    sbb16 16 Defined, "sbb di, si";
    sbb32 32 Defined, "sbb edi, esi";
    sbb64 64 Defined, "sbb rdi, rsi";
    sbb_self 32 Defined, "sbb eax, eax";
    cmp8 8 Defined, "cmp dil, sil";
    cmp16 16 Defined, "cmp di, si";
    cmp32 32 Defined, "cmp edi, esi";
    cmp64 64 Defined, "cmp rdi, rsi";
    cmp_imm8 32 Defined, "cmp edi, 0x7f";
    neg8 8 Defined, "neg dil";
    neg16 16 Defined, "neg di";
    neg32 32 Defined, "neg edi";
    neg64 64 Defined, "neg rdi";
    inc8 8 Defined, "inc dil";
    inc16 16 Defined, "inc di";
    inc32 32 Defined, "inc edi";
    inc64 64 Defined, "inc rdi";
    dec8 8 Defined, "dec dil";
    dec16 16 Defined, "dec di";
    dec32 32 Defined, "dec edi";
    dec64 64 Defined, "dec rdi";
    not32 32 Defined, "not edi";
    and8 8 Logic, "and dil, sil";
    and32 32 Logic, "and edi, esi";
    and64 64 Logic, "and rdi, rsi";
    or16 16 Logic, "or di, si";
    or64 64 Logic, "or rdi, rsi";
    xor8 8 Logic, "xor dil, sil";
    xor32 32 Logic, "xor edi, esi";
    test8 8 Logic, "test dil, sil";
    test64 64 Logic, "test rdi, rsi";
    shl8 8 Shift(Count::Cl), "shl dil, cl";
    shl16 16 Shift(Count::Cl), "shl di, cl";
    shl32 32 Shift(Count::Cl), "shl edi, cl";
    shl64 64 Shift(Count::Cl), "shl rdi, cl";
    shl1_8 8 Shift(Count::Imm(1)), "shl dil, 1";
    shl1_64 64 Shift(Count::Imm(1)), "shl rdi, 1";
    shl5_32 32 Shift(Count::Imm(5)), "shl edi, 5";
    shr8 8 Shift(Count::Cl), "shr dil, cl";
    shr16 16 Shift(Count::Cl), "shr di, cl";
    shr32 32 Shift(Count::Cl), "shr edi, cl";
    shr64 64 Shift(Count::Cl), "shr rdi, cl";
    shr1_32 32 Shift(Count::Imm(1)), "shr edi, 1";
    shr3_64 64 Shift(Count::Imm(3)), "shr rdi, 3";
    sar8 8 Shift(Count::Cl), "sar dil, cl";
    sar16 16 Shift(Count::Cl), "sar di, cl";
    sar32 32 Shift(Count::Cl), "sar edi, cl";
    sar64 64 Shift(Count::Cl), "sar rdi, cl";
    sar1_16 16 Shift(Count::Imm(1)), "sar di, 1";
    sar63_64 64 Shift(Count::Imm(63)), "sar rdi, 63";
    rol8 8 Rotate(Count::Cl), "rol dil, cl";
    rol16 16 Rotate(Count::Cl), "rol di, cl";
    rol32 32 Rotate(Count::Cl), "rol edi, cl";
    rol64 64 Rotate(Count::Cl), "rol rdi, cl";
    rol1_32 32 Rotate(Count::Imm(1)), "rol edi, 1";
    ror8 8 Rotate(Count::Cl), "ror dil, cl";
    ror16 16 Rotate(Count::Cl), "ror di, cl";
    ror32 32 Rotate(Count::Cl), "ror edi, cl";
    ror64 64 Rotate(Count::Cl), "ror rdi, cl";
    ror1_64 64 Rotate(Count::Imm(1)), "ror rdi, 1";
    rcl8 8 Rotate(Count::Cl), "rcl dil, cl";
    rcl16 16 Rotate(Count::Cl), "rcl di, cl";
    rcl32 32 Rotate(Count::Cl), "rcl edi, cl";
    rcl64 64 Rotate(Count::Cl), "rcl rdi, cl";
    rcl1_64 64 Rotate(Count::Imm(1)), "rcl rdi, 1";
    rcr8 8 Rotate(Count::Cl), "rcr dil, cl";
    rcr16 16 Rotate(Count::Cl), "rcr di, cl";
    rcr32 32 Rotate(Count::Cl), "rcr edi, cl";
    rcr64 64 Rotate(Count::Cl), "rcr rdi, cl";
    rcr1_32 32 Rotate(Count::Imm(1)), "rcr edi, 1";
    shld32 32 DoubleShift, "shld edi, esi, cl";
    shld64 64 DoubleShift, "shld rdi, rsi, cl";
    shrd32 32 DoubleShift, "shrd edi, esi, cl";
    shrd64 64 DoubleShift, "shrd rdi, rsi, cl";
    imul2_16 16 Mul, "imul di, si";
    imul2_32 32 Mul, "imul edi, esi";
    imul2_64 64 Mul, "imul rdi, rsi";
    imul3_16 16 Mul, "imul di, si, 0x1234";
    imul3_32 32 Mul, "imul edi, esi, -3";
    imul3_64 64 Mul, "imul rdi, rsi, 0x12345";
    imul1_8 8 Mul, "imul sil";
    imul1_16 16 Mul, "imul si";
    imul1_32 32 Mul, "imul esi";
    imul1_64 64 Mul, "imul rsi";
    mul8 8 Mul, "mul sil";
    mul16 16 Mul, "mul si";
    mul32 32 Mul, "mul esi";
    mul64 64 Mul, "mul rsi";
    div8 8 Div { signed: false }, "movzx eax, dil\ndiv sil";
    div16 16 Div { signed: false }, "xor edx, edx\ndiv si";
    div32 32 Div { signed: false }, "xor edx, edx\ndiv esi";
    div64 64 Div { signed: false }, "xor edx, edx\ndiv rsi";
    idiv8 8 Div { signed: true }, "movsx ax, dil\nidiv sil";
    idiv16 16 Div { signed: true }, "cwd\nidiv si";
    idiv32 32 Div { signed: true }, "cdq\nidiv esi";
    idiv64 64 Div { signed: true }, "cqo\nidiv rsi";
    setcc_a 64 Defined, "cmp rdi, rsi\nseto al\nsetno ah\nsetb dl\nsetae dh\nsete cl\nsetne ch\nsetbe sil\nseta dil";
    setcc_b 64 Defined, "cmp rdi, rsi\nsetl al\nsetge ah\nsetle dl\nsetg dh\nsets cl\nsetns ch\nsetp sil\nsetnp dil";
    setcc_c 32 Defined, "cmp edi, esi\nsetl al\nsetge ah\nsetle dl\nsetg dh\nsetb cl\nseta ch\nsetbe sil\nsetae dil";
    setcc_d 8 Defined, "cmp dil, sil\nsetl al\nsetge ah\nsetle dl\nsetg dh\nsetb cl\nseta ch\nsetbe sil\nsetae dil";
    cmov32 32 Defined, "cmp edi, esi\ncmovl eax, esi\ncmovb edx, edi\ncmovg ecx, edi";
    cmov64 64 Defined, "cmp rdi, rsi\ncmovle rax, rsi\ncmovae rdx, rdi\ncmovs rcx, rdi";
    bsf32 32 BitScan, "bsf edi, esi";
    bsr64 64 BitScan, "bsr rdi, rsi";
    tzcnt32 32 Count, "tzcnt edi, esi";
    tzcnt64 64 Count, "tzcnt rdi, rsi";
    lzcnt16 16 Count, "lzcnt di, si";
    lzcnt64 64 Count, "lzcnt rdi, rsi";
    popcnt32 32 Defined, "popcnt edi, esi";
    popcnt64 64 Defined, "popcnt rdi, rsi";
    bt32 32 BitTest, "bt edi, esi";
    bts64 64 BitTest, "bts rdi, rsi";
    btr16 16 BitTest, "btr di, si";
    btc64 64 BitTest, "btc rdi, 37";
    bswap32 32 Defined, "bswap edi";
    bswap64 64 Defined, "bswap rdi";
    xadd32 32 Defined, "xadd edi, esi";
    xchg8 8 Defined, "xchg dil, sil";
    cmpxchg32 32 Defined, "cmpxchg edi, esi";
    cmpxchg64 64 Defined, "cmpxchg rdi, rsi";
    cmpxchg8 8 Defined, "cmpxchg dil, sil";
    cmpxchg_ne8 8 Defined, "cmpxchg dl, dil";
    cmpxchg_ne16 16 Defined, "cmpxchg dx, di";
    cmpxchg_ne32 32 Defined, "cmpxchg edx, edi";
    cmpxchg_ne64 64 Defined, "cmpxchg rdx, rdi";
    movsx 64 Defined, "movsx rdi, sil\nmovsx edx, si\nmovsxd rsi, esi";
    movzx 64 Defined, "movzx edi, sil\nmovzx rdx, si\nmov ax, si";
    convert_a 64 Defined, "cbw\nmovsx rdi, ax\ncwde\nmovsxd rsi, eax\ncdqe";
    convert_b 64 Defined, "cwd\nmov rdi, rdx\ncdq\nmov rsi, rdx\ncqo";
    stosb 8 Defined, "lea rdi, [r8+48]\nmov ecx, 9\nrep stosb\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    stosw_down 16 Defined, "lea rdi, [r8+120]\nmov ecx, 5\nstd\nrep stosw\ncld\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    stosq 64 Defined, "lea rdi, [r8+48]\nmov ecx, 3\nrep stosq\nstosd\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    movsb_overlap 8 Defined, "lea rdi, [r8+48]\nmov [rdi], rax\nmov [rdi+8], rdx\nlea rsi, [r8+48]\nlea rdi, [r8+51]\nmov ecx, 29\nrep movsb\nnot r8\nlea rdi, [rdi+r8+1]\nlea rsi, [rsi+r8+1]\nnot r8";
    movsq_down 64 Defined, "lea rdi, [r8+48]\nmov [rdi], rax\nmov [rdi+8], rdx\nmov [rdi+16], rax\nlea rsi, [r8+64]\nlea rdi, [r8+80]\nmov ecx, 3\nstd\nrep movsq\ncld\nnot r8\nlea rdi, [rdi+r8+1]\nlea rsi, [rsi+r8+1]\nnot r8";
    movsd_once 32 Defined, "lea rdi, [r8+48]\nmov [rdi], rax\nlea rsi, [r8+48]\nlea rdi, [r8+60]\nmovsd\nmovsw\nnot r8\nlea rdi, [rdi+r8+1]\nlea rsi, [rsi+r8+1]\nnot r8";
    cmpsb_repe 8 Defined, "lea rdi, [r8+48]\nmov [rdi], rax\nmov [rdi+8], rdx\nlea rsi, [r8+48]\nlea rdi, [r8+56]\nmov ecx, 8\nrepe cmpsb\nnot r8\nlea rdi, [rdi+r8+1]\nlea rsi, [rsi+r8+1]\nnot r8";
    cmpsq_down 64 Defined, "lea rdi, [r8+48]\nmov [rdi], rax\nmov [rdi+8], rdx\nmov [rdi+16], rax\nlea rsi, [r8+64]\nlea rdi, [r8+56]\nmov ecx, 2\nstd\nrepe cmpsq\ncld\nnot r8\nlea rdi, [rdi+r8+1]\nlea rsi, [rsi+r8+1]\nnot r8";
    cmpsw_repne 16 Defined, "lea rdi, [r8+48]\nmov [rdi], rax\nmov [rdi+8], rdx\nlea rsi, [r8+48]\nlea rdi, [r8+56]\nmov ecx, 4\nrepne cmpsw\nnot r8\nlea rdi, [rdi+r8+1]\nlea rsi, [rsi+r8+1]\nnot r8";
    scasb_repne 8 Defined, "lea rdi, [r8+48]\nmov [rdi], rdx\nmov ecx, 8\nrepne scasb\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    scasd_repe 32 Defined, "lea rdi, [r8+48]\nmov [rdi], rdx\nmov [rdi+4], rax\nmov ecx, 2\nrepe scasd\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    lodsw_down 16 Defined, "lea rsi, [r8+48]\nmov [rsi], rdx\nlea rsi, [rsi+6]\nstd\nlodsw\nlodsb\ncld\nnot r8\nlea rsi, [rsi+r8+1]\nnot r8";
    bts_mem 64 BitTest, "lea rdi, [r8+56]\nmov [rdi-8], rax\nmov [rdi], rdx\nand rcx, 127\nsub rcx, 64\nbts [rdi], rcx\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    btr_mem 32 BitTest, "lea rdi, [r8+56]\nmov [rdi-8], rax\nmov [rdi], rdx\nand ecx, 127\nsub ecx, 64\nbtr dword ptr [rdi], ecx\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    btc_mem 16 BitTest, "lea rdi, [r8+56]\nmov [rdi-8], rax\nmov [rdi], rdx\nand ecx, 127\nsub ecx, 64\nbtc word ptr [rdi], cx\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    bt_mem_imm 64 BitTest, "lea rdi, [r8+48]\nmov [rdi], rax\nbt qword ptr [rdi], 45\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    rmw_mem 32 Defined, "lea rdi, [r8+48]\nmov [rdi], rax\nmov [rdi+8], rdx\nshl qword ptr [rdi+8], cl\nneg byte ptr [rdi+9]\nsbb [rdi+4], si\nadd dword ptr [rdi], esi\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    lock_mem 64 Defined, "lea rdi, [r8+48]\nmov [rdi], rdx\nlock cmpxchg [rdi], rsi\nlock xadd [rdi+8], rax\nxchg [rdi+16], rdx\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    cmpxchg_mem 32 Defined, "lea rdi, [r8+48]\nmov [rdi], rax\nlock cmpxchg [rdi], esi\nmov [rdi+8], rsi\nlock cmpxchg [rdi+8], esi\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    ext_mem 64 Defined, "lea rdi, [r8+48]\nmov [rdi], rsi\nmovsx rax, byte ptr [rdi+1]\nmovzx edx, word ptr [rdi+3]\nmovsxd rcx, dword ptr [rdi+2]\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    imul_mem 32 Mul, "lea rdi, [r8+48]\nmov [rdi], rsi\nimul esi, [rdi], 0x55\nimul rax, [rdi]\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    mul_mem 64 Mul, "lea rdi, [r8+48]\nmov [rdi], rsi\nmul qword ptr [rdi]\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    cmov_set_mem 64 Defined, "lea rdi, [r8+48]\nmov [rdi], rsi\ncmp rax, rsi\ncmovg rdx, [rdi]\nsetle byte ptr [rdi+8]\ncmovb ecx, [rdi+4]\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    stack_mem 64 Defined, "lea rdi, [r8+48]\nmov [rdi], rdx\npush qword ptr [rdi]\npop qword ptr [rdi+8]\npush -5\npop rcx\npush si\npop ax\npush rbp\nmov rbp, rsp\npush rax\npush rdx\nleave\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    call_ret 64 Defined, "push rax\ncall 1f\njmp 2f\n1: mov rsi, [rsp]\nret 8\n2: lea rdx, [rip+3f]\ncall rdx\njmp 4f\n3: mov rcx, [rsp]\nret\n4:";
    jmp_mem 64 Defined, "lea rdi, [r8+48]\nlea rdx, [rip+1f]\nmov [rdi], rdx\njmp qword ptr [rdi]\nud2\n1: mov eax, 7\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
    lea_forms 64 Defined, "lea eax, [rdi+rsi*4+0x12345678]\nlea rdx, [edi+esi*2]\nlea cx, [rdi-1]\nlea rsi, [rsi+rsi*8-3]";
    flags_ops 64 Defined, "cmp rdi, rsi\ncmc\nadc rax, 0\nstc\nsbb rdx, 0\nclc\nadc rcx, 1";
    pushf_popf 64 Defined, "pushfq\npop rdx\nxor rdx, 0x8d5\npush rdx\npopfq";
    rep_zero 8 Defined, "lea rdi, [r8+48]\nxor ecx, ecx\nrep stosb\nrepe cmpsb\nnot r8\nlea rdi, [rdi+r8+1]\nnot r8";
}

/// [start, end) of this file's assembly, as bytes.
fn code_between(start: usize, end: usize) -> Vec<u8> {
    assert!(start < end && end - start < 1 << 16);
    // SAFETY: both addresses are labels of the global_asm! block above, start before end:
    // the range is that block's machine code in this binary's text segment, mapped
    // readable (and never written) for the life of the process.
    unsafe { std::slice::from_raw_parts(start as *const u8, end - start) }.to_vec()
}

/// This file's assembly at its own addresses.
type CodeMemory = FlatMemory;

const STACK: u64 = 0x7000_0000;
const OUT: u64 = 0x6000_0000;
const RETURN_TO: u64 = 0x5000_0000;

fn emulate(
    mem: &mut CodeMemory,
    entry: u64,
    a: u64,
    b: u64,
    flags: u64,
) -> Result<[u64; WORDS], EmuError> {
    let mut regs = Registers {
        rflags: 0x202,
        ..Registers::default()
    };
    regs.gpr[RDI] = a;
    regs.gpr[RSI] = b;
    regs.gpr[RDX] = flags;
    regs.gpr[RCX] = OUT;
    regs.gpr[RSP] = STACK;
    let mut m = Machine::new(regs);
    // Stack and output are fake objects: never read from memory.
    m.add_scratch(STACK - 0x1000, 0x2000);
    m.add_scratch(OUT, 8 * WORDS as u64);
    m.call_function(entry, RETURN_TO);
    m.run(mem, &mut NoHooks, 100)?;
    let mut bytes = [0u8; 8 * WORDS];
    m.read(mem, OUT, &mut bytes)?;
    let mut out = [0u64; WORDS];
    for (o, c) in out.iter_mut().zip(bytes.chunks(8)) {
        *o = u64::from_le_bytes(c.try_into().unwrap());
    }
    Ok(out)
}

fn native(op: &Op, a: u64, b: u64, flags: u64) -> [u64; WORDS] {
    let mut out = [0u64; WORDS];
    // SAFETY: the function is this file's assembly: it follows the C ABI (clobbers only rax,
    // rcx, rdx, rsi, rdi, r8 and the flags, leaves the stack balanced and DF/TF clear as
    // `flags` has them), writes only within the 128 bytes of `out`, and faults for no input given to it
    // (inputs a division would fault on are skipped by the caller).
    unsafe { (op.f)(a, b, flags, &mut out) };
    out
}

fn mask(width: u32) -> u64 {
    if width == 64 {
        u64::MAX
    } else {
        (1 << width) - 1
    }
}

/// The flags left undefined for these inputs, or None to skip them (a native fault).
fn undefined(op: &Op, a: u64, b: u64) -> Option<u64> {
    let w = op.width;
    let count = |c: Count| match c {
        Count::Cl => b & if w == 64 { 63 } else { 31 },
        Count::Imm(n) => n,
    };
    Some(match op.class {
        Defined => 0,
        Logic => AF,
        Shift(c) => match count(c) {
            0 => 0,
            1 => AF,
            n => AF | OF | if n >= u64::from(w) { CF } else { 0 },
        },
        Rotate(c) => match count(c) {
            1 => 0,
            _ => OF,
        },
        DoubleShift => match b & if w == 64 { 63 } else { 31 } {
            0 => 0,
            1 => AF,
            _ => AF | OF,
        },
        Mul => SF | ZF | AF | PF,
        Div { signed } => {
            let d = b & mask(w);
            let min = 1u64 << (w - 1);
            if d == 0 || (signed && a & mask(w) == min && d == mask(w)) {
                return None;
            }
            STATUS
        }

        BitScan => STATUS & !ZF,
        Count | BitTest => OF | SF | AF | PF,
    })
}

fn inputs() -> Vec<u64> {
    let mut v = vec![
        0,
        1,
        2,
        3,
        7,
        8,
        9,
        15,
        16,
        17,
        31,
        32,
        33,
        63,
        64,
        0x7f,
        0x80,
        0xff,
        0x100,
        0x7fff,
        0x8000,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        0x1_0000_0000,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        u64::MAX,
        u64::MAX - 1,
        0x0123_4567_89ab_cdef,
        0xfedc_ba98_7654_3210,
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x);
    }
    v
}

#[test]
fn instructions_compute_what_the_host_cpu_computes() {
    let end = emu_ops_end as *const () as usize;
    let inputs = inputs();
    let mut compared = 0u64;
    let mut failures = Vec::new();
    for op in OPS {
        let entry = op.f as usize;
        let mut mem = CodeMemory {
            base: entry as u64,
            bytes: code_between(entry, end),
        };
        for &a in &inputs {
            for &b in &inputs {
                // Flags in: all status flags clear, then all set (CF in for adc/sbb, kept
                // flags for inc/dec and rotates).
                for flags in [0x202, 0x202 | STATUS] {
                    let Some(undef) = undefined(op, a, b) else {
                        continue;
                    };
                    let want = native(op, a, b, flags);
                    let got = match emulate(&mut mem, entry as u64, a, b, flags) {
                        Ok(got) => got,
                        Err(e) => panic!("{}: {e}", op.name),
                    };
                    let regs_equal = want[..5] == got[..5] && want[6..] == got[6..];
                    let flags_equal = (want[5] ^ got[5]) & !undef == 0;
                    if !(regs_equal && flags_equal) && failures.len() < 20 {
                        failures.push(format!(
                            "{} a={a:#x} b={b:#x} flags={flags:#x}: cpu {want:x?}, emulated {got:x?}",
                            op.name
                        ));
                    }
                    compared += 1;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(compared > 150_000, "compared {compared}");
    eprintln!(
        "{} functions, {compared} input sets equal to the CPU",
        OPS.len()
    );
}

#[test]
fn division_by_zero_and_quotient_overflow_are_divide_errors() {
    let end = emu_ops_end as *const () as usize;
    for (op, a, b) in [
        ("div32", 5, 0),
        ("div64", 0, 0),
        ("idiv8", 0x80, 0xff),
        ("idiv64", 1 << 63, u64::MAX),
    ] {
        let op = OPS.iter().find(|o| o.name == op).unwrap();
        let entry = op.f as usize;
        let mut mem = CodeMemory {
            base: entry as u64,
            bytes: code_between(entry, end),
        };
        match emulate(&mut mem, entry as u64, a, b, 0x202) {
            Err(EmuError::DivideError { rip }) => {
                assert!(
                    rip > entry as u64 && rip < end as u64,
                    "{}: at {rip:#x}",
                    op.name
                )
            }
            other => panic!("{}({a:#x}, {b:#x}): {other:?}", op.name),
        }
    }
}
