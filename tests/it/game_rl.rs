//! Integration tests: game_rl
