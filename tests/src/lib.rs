//! End-to-end tests of the Keel mesh.
