//! The server side of one RTMP connection. PLACEHOLDER.
