//! Bit and arithmetic library functions: multiplication (hweight), shifts and bsr (int_sqrt),
//! tzcnt/bsf (gcd), division and digit loops (kstrtoull), table lookups (crc32), bit scans
//! (find_next_bit) and indirect calls through retpoline thunks (sort).
