//! Size comparison (filled below).
