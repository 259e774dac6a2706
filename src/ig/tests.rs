//! Behavioural tests of `ig` on the committed fixtures and the real US Core packages.
