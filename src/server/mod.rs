//! Sockets, workers and the stream registry. PLACEHOLDER.
