//! The end-to-end tests, one binary (one link, one start-up for the whole
//! suite): each module an area, each test with throwaway clusters, the real
//! agent binary and real storage, set up through `pgbackups_e2e::env`.

mod atomic;
mod bad_days;
mod capture;
mod copy_exact;
mod encryption;
mod events;
mod extension;
mod faults;
mod fidelity;
mod keep;
mod lifecycle;
mod links;
mod majors;
mod names;
mod observe;
mod outlive;
mod privileges;
mod progress;
mod restore;
mod restore_tables;
mod s3;
mod selective;
mod shell;
mod status_page;
mod tls;
mod verify;
