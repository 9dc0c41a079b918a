//! The dashboard's tests. `pages`: real headless Chromium through WebDriver, on SQLite and
//! on PostgreSQL, with the dashboard mounted under a path as an application would; they
//! write screenshots under `target/dashboard-screenshots/` for a person to look at.
//! `serve`: the dashboard served at the root with basic auth, as the CLI serves it.

mod fixture;
mod http;
mod pages;
mod serve;
mod webdriver;

/// One test per case for a backend.
macro_rules! cases {
    ($backend:expr) => {
        use crate::pages;

        #[test]
        fn overview_shows_the_counts() {
            pages::overview_shows_the_counts($backend);
        }

        #[test]
        fn a_filter_narrows_the_list() {
            pages::a_filter_narrows_the_list($backend);
        }

        #[test]
        fn a_workflow_shows_its_timeline_and_children() {
            pages::a_workflow_shows_its_timeline_and_children($backend);
        }

        #[test]
        fn retry_makes_a_failed_job_pending() {
            pages::retry_makes_a_failed_job_pending($backend);
        }

        #[test]
        fn cancel_and_delete_ask_first_then_act() {
            pages::cancel_and_delete_ask_first_then_act($backend);
        }

        #[test]
        fn a_script_payload_stays_inert() {
            pages::a_script_payload_stays_inert($backend);
        }

        #[test]
        fn read_only_shows_no_action_and_refuses_posts() {
            pages::read_only_shows_no_action_and_refuses_posts($backend);
        }

        #[test]
        fn a_post_without_the_csrf_token_is_refused() {
            pages::a_post_without_the_csrf_token_is_refused($backend);
        }

        #[test]
        fn links_stay_under_the_mount_path() {
            pages::links_stay_under_the_mount_path($backend);
        }

        #[test]
        fn queues_and_schedules_pause_and_resume() {
            pages::queues_and_schedules_pause_and_resume($backend);
        }
    };
}

mod sqlite {
    cases!(crate::fixture::Backend::Sqlite);
}

mod postgres {
    cases!(crate::fixture::Backend::Postgres);
}
