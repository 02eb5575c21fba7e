"""Every command fed its bad inputs: a non-zero exit, exactly one `error:` line, no traceback, and no new
or changed file anywhere in the working folder (inputs included).

The commands run in-process through main.main(), so any exception other than the project's own error
type (and OSError for paths) escapes and fails the test, as a traceback would.
"""
import hashlib
import shutil
from pathlib import Path

import pytest

import main as entry

GOOD_LOG = "queries,query_time_s,entropy_cost,privacy_cost,privacy_eps,gap_cost\n" + "".join(
    f"{q},{0.01 * q / 64:.4f},{0.02 * q:.3f},{0.2 * q:.3f},{q / 50:.3f},{0.03 * q:.3f}\n" for q in (64, 128, 192, 256))
HEADER = GOOD_LOG.splitlines()[0] + "\n"
ATTACK_HEADER = "time (sec),mode,accuracy,diff queries,privacy cost\n"

FILES = {
    "notes.txt": "my notes, not a checkpoint\n",
    "baseline.csv": GOOD_LOG,
    "dup_queries.csv": HEADER + "64,0.01,1,1,1,1\n64,0.02,2,2,2,2\n",
    "zero_time.csv": HEADER + "64,0,1,1,1,1\n128,0,2,2,2,2\n",
    "nan.csv": HEADER + "64,0.01,nan,1,1,1\n",
    "huge.csv": HEADER + "64,0.01,1e308,1,1,1\n128,0.02,1.7e308,2,2,2\n",
    "negative.csv": HEADER + "-64,0.01,1,1,1,1\n64,0.02,2,2,2,2\n",
    "header_only.csv": HEADER,
    "votes_inf.csv": "300,0,0\ninf,0,0\n",
    "votes_huge.csv": "300,0,0\n1e400,0,0\n",
    "attacks_strings.csv": ATTACK_HEADER + "1.0,copycat,abc,16,5\n",
    "attacks_header.csv": ATTACK_HEADER,
    "attacks_zero_time.csv": ATTACK_HEADER + "0,copycat,50,16,5\n",
    "paper_cal.csv": "time,privacy,queries\n1.0,10,1000\n2.0,20,2000\n",
    "timing_bad.csv": "puzzle,solver,workers,difficulty,expected_work,trials,mean_tries,mean_s,median_s,p90_s,rate\n"
                      "sha256,python,1,10,10,3,10,nan,1,1,1000\n",
    "afile": "a regular file, not a folder\n",
    "runlike/log.csv": GOOD_LOG,
    "bl.params.json": GOOD_LOG,
    "boolish.csv": HEADER + "True,0.01,1,1,1,1\nTrue,0.02,2,2,2,2\n",
    "fractional.csv": HEADER + "64.5,0.01,1,1,1,1\n",
    "huge_queries.csv": HEADER + "64,0.01,1,1,1,1\n1e308,0.02,2,2,2,2\n",
    "dup_columns.csv": "queries,query_time_s,entropy_cost,queries\n64,0.01,1,7\n",
    "runlike/log_pow.csv": GOOD_LOG,
    "badruns/copycat/log.csv": HEADER + "64,-5,1,1,1,1\n128,0.02,2,2,2,2\n",
}

EXTRACT = ["extract", "--victim_path", "{in}/victim.pt", "--out_dir", "{out}/run", "--device", "cpu"]
KEYED = ["--key", "k" * 32]
SERVE = ["--calibration", "{in}/baseline.csv", "--victim_path", "{in}/victim.pt", "--state", "sqlite:///{out}/s.db",
         "--device", "cpu"]
CASES = {
    # extract: NaN and out-of-range numbers, bad baselines, impossible budgets, unusable paths
    "extract-sigma-nan": EXTRACT + ["--sigma", "nan"],
    "extract-sigma-inf": EXTRACT + ["--sigma", "inf"],
    "extract-base-nan": EXTRACT + ["--base", "nan"],
    "extract-pow-budget-nan": EXTRACT + ["--pow_budget", "nan"],
    "extract-tolerance-nan": EXTRACT + ["--tolerance", "nan"],
    "extract-max-factor-inf": EXTRACT + ["--max_factor", "inf"],
    "extract-delta-1": EXTRACT + ["--delta", "1"],
    "extract-batch-size-0": EXTRACT + ["--batch_size", "0"],
    "extract-query-batch-0": EXTRACT + ["--query_batch", "0"],
    "extract-budget-0": EXTRACT + ["--budget", "0"],
    "extract-workers-negative": EXTRACT + ["--workers", "-1"],
    "extract-seed-negative": EXTRACT + ["--seed", "-1"],
    "extract-budget-huge": EXTRACT + ["--mode", "copycat", "--budget", "1000000000000"],
    "extract-calibration-folder": EXTRACT + ["--calibration", "{in}/adir"],
    "extract-baseline-duplicate-queries": EXTRACT + ["--calibration", "{in}/dup_queries.csv"],
    "extract-baseline-zero-time": EXTRACT + ["--calibration", "{in}/zero_time.csv"],
    "extract-baseline-nan": EXTRACT + ["--calibration", "{in}/nan.csv"],
    "extract-baseline-huge": EXTRACT + ["--calibration", "{in}/huge.csv"],
    "extract-baseline-header-only": EXTRACT + ["--calibration", "{in}/header_only.csv"],
    "extract-timing-table-nan": EXTRACT + ["--calibration", "{in}/baseline.csv", "--timing_table", "measured",
                                           "--timing_csv", "{in}/timing_bad.csv", "--puzzle", "sha256"],
    "extract-out-under-file": EXTRACT[:-4] + ["--out_dir", "{in}/afile/run", "--device", "cpu"],
    "extract-victim-text": ["extract", "--victim_path", "{in}/notes.txt", "--out_dir", "{out}/run"],
    "extract-unknown-mode": EXTRACT + ["--mode", "steal"],
    # train-victim
    "train-epochs-negative": ["train-victim", "--epochs", "-1", "--victim_path", "{out}/v.pt"],
    "train-epochs-zero": ["train-victim", "--epochs", "0", "--victim_path", "{out}/v.pt"],
    "train-existing-file": ["train-victim", "--epochs", "1", "--victim_path", "{in}/notes.txt"],
    "train-under-file": ["train-victim", "--epochs", "1", "--victim_path", "{in}/afile/v.pt"],
    "train-unknown-dataset": ["train-victim", "--dataset", "nope", "--victim_path", "{out}/v.pt"],
    # demo
    "demo-victim-text": ["demo", "--victim_path", "{in}/notes.txt", "--out_dir", "{out}/demo", "--device", "cpu"],
    "demo-budget-0": ["demo", "--budget", "0", "--out_dir", "{out}/demo"],
    "demo-out-under-file": ["demo", "--victim_path", "{in}/victim.pt", "--out_dir", "{in}/afile/demo"],
    # privacy-cost
    "privacy-dataset-unknown": ["privacy-cost", "--votes", "{in}/votes_inf.csv", "--dataset", "nope"],
    "privacy-votes-folder": ["privacy-cost", "--votes", "{in}/adir"],
    "privacy-votes-inf": ["privacy-cost", "--votes", "{in}/votes_inf.csv"],
    "privacy-votes-1e400": ["privacy-cost", "--votes", "{in}/votes_huge.csv"],
    "privacy-sigma-nan": ["privacy-cost", "--votes", "{in}/votes_inf.csv", "--sigma", "nan"],
    "privacy-out-under-file": ["privacy-cost", "--votes", "{in}/votes_inf.csv", "--out", "{in}/afile/o.csv"],
    # pow-time
    "pow-time-negative-queries": ["pow-time", "--calibration", "{in}/baseline.csv", "--log", "{in}/negative.csv",
                                  "--out", "{out}/p.csv"],
    "pow-time-huge-baseline": ["pow-time", "--calibration", "{in}/huge.csv", "--log", "{in}/baseline.csv",
                               "--out", "{out}/p.csv"],
    "pow-time-header-only-log": ["pow-time", "--calibration", "{in}/baseline.csv", "--log",
                                 "{in}/header_only.csv", "--out", "{out}/p.csv"],
    "pow-time-out-is-log": ["pow-time", "--calibration", "{in}/paper_cal.csv", "--log", "{in}/baseline.csv",
                            "--out", "{in}/baseline.csv"],
    "pow-time-base-nan": ["pow-time", "--calibration", "{in}/baseline.csv", "--log", "{in}/baseline.csv",
                          "--base", "nan", "--out", "{out}/p.csv"],
    "pow-time-bases-empty": ["pow-time", "--calibration", "{in}/baseline.csv", "--log", "{in}/baseline.csv",
                             "--bases", ","],
    "pow-time-calibration-folder": ["pow-time", "--calibration", "{in}/adir", "--log", "{in}/baseline.csv",
                                    "--out", "{out}/p.csv"],
    "pow-time-out-under-file": ["pow-time", "--calibration", "{in}/baseline.csv", "--log", "{in}/baseline.csv",
                                "--out", "{in}/afile/p.csv"],
    "extract-lr-huge": EXTRACT + ["--lr", "1e308"],
    "extract-timing-paper-scrypt": EXTRACT + ["--calibration", "{in}/baseline.csv", "--timing_table", "paper",
                                              "--puzzle", "scrypt"],
    "extract-calibration-is-own-log": ["extract", "--victim_path", "{in}/victim.pt", "--out_dir", "{in}/runlike",
                                       "--calibration", "{in}/runlike/log.csv", "--fresh"],
    "extract-victim-is-own-stolen": ["extract", "--victim_path", "{in}/runlike/stolen.pt", "--out_dir",
                                     "{in}/runlike"],
    "train-lr-huge": ["train-victim", "--epochs", "1", "--lr", "1e308", "--victim_path", "{out}/v.pt"],
    "train-dangling-link": ["train-victim", "--epochs", "1", "--victim_path", "{in}/dangling"],
    "privacy-sigma-tiny": ["privacy-cost", "--votes", "{in}/votes_inf.csv", "--sigma", "1e-320"],
    "pow-time-record-is-calibration": ["pow-time", "--calibration", "{in}/bl.params.json", "--log",
                                       "{in}/baseline.csv", "--out", "{in}/bl.csv"],
    "pow-time-bool-queries": ["pow-time", "--calibration", "{in}/baseline.csv", "--log", "{in}/boolish.csv",
                              "--out", "{out}/p.csv"],
    "pow-time-fractional-queries": ["pow-time", "--calibration", "{in}/baseline.csv", "--log",
                                    "{in}/fractional.csv", "--out", "{out}/p.csv"],
    "pow-time-huge-queries": ["pow-time", "--calibration", "{in}/baseline.csv", "--log", "{in}/huge_queries.csv",
                              "--out", "{out}/p.csv"],
    "pow-time-duplicate-columns": ["pow-time", "--calibration", "{in}/baseline.csv", "--log",
                                   "{in}/dup_columns.csv", "--out", "{out}/p.csv"],
    "table-out-is-calibration": ["pow-table", "--calibration", "{in}/paper_cal.csv", "--attacks",
                                 "{in}/attacks_zero_time.csv", "--out", "{in}/paper_cal.csv"],
    "calibrate-out-is-the-plot": ["pow-calibrate", "--puzzles", "sha256", "--trials", "1", "--max_seconds", "0.01",
                                  "--out", "{out}/t.png"],
    "demo-victim-inside-out": ["demo", "--victim_path", "{in}/runlike/stolen.pt", "--out_dir", "{in}/runlike"],
    "separation-out-is-victim": ["cost-separation", "--datasets", "mnist-5k", "--victim_dir", "{in}/runlike",
                                 "--out", "{in}/runlike/mnist-5k-victim.pt"],
    "extract-device-meta": EXTRACT + ["--device", "meta"],
    "extract-ood-pool-is-victim-data": EXTRACT + ["--mode", "copycat", "--ood_pool", "mnist-5k"],
    "extract-jacobian-budget-below-seed": EXTRACT + ["--mode", "jacobian", "--budget", "100"],
    "extract-dfme-budget-below-iteration": EXTRACT + ["--mode", "dfme", "--budget", "300"],
    "extract-dfme-directions-0": EXTRACT + ["--mode", "dfme", "--dfme_directions", "0"],
    "extract-dfme-epsilon-nan": EXTRACT + ["--mode", "dfme", "--dfme_epsilon", "nan"],
    "extract-mixmatch-labels-whole-pool": EXTRACT + ["--mode", "mixmatch", "--budget", "1500"],
    "extract-mixmatch-t-0": EXTRACT + ["--mode", "mixmatch", "--mixmatch_t", "0"],
    "extract-pate-no-teachers": EXTRACT + ["--cost_measure", "pate", "--teachers_path", "{in}/none.pt"],
    "extract-pate-teachers-text": EXTRACT + ["--cost_measure", "pate", "--teachers_path", "{in}/notes.txt"],
    "extract-pate-sigma-nan": EXTRACT + ["--cost_measure", "pate", "--pate_sigma", "nan"],
    "summarize-no-runs": ["summarize", "--runs", "{in}/adir"],
    "summarize-priced-is-calibration": ["summarize", "--runs", "{in}", "--calibration", "{in}/runlike/log_pow.csv"],
    "summarize-negative-time": ["summarize", "--runs", "{in}/badruns", "--calibration", "{in}/baseline.csv"],
    "summarize-no-accuracy": ["summarize", "--runs", "{in}", "--calibration", "{in}/baseline.csv"],
    "extract-other-mode-flag-out-of-range": EXTRACT + ["--mode", "standard", "--dfme_epsilon", "5"],
    "extract-dfme-too-many-directions": EXTRACT + ["--mode", "dfme", "--dfme_directions", "10000",
                                                   "--budget", "700000"],
    "summarize-wrong-measure": ["summarize", "--runs", "{in}", "--cost_measure", "pate",
                                "--calibration", "{in}/baseline.csv"],
    "teachers-exists": ["train-teachers", "--teachers_path", "{in}/victim.pt", "--num_models", "2"],
    "teachers-num-models-0": ["train-teachers", "--teachers_path", "{out}/t.pt", "--num_models", "0"],
    "teachers-too-many": ["train-teachers", "--teachers_path", "{out}/t.pt", "--num_models", "5000",
                          "--teacher_epochs", "1"],
    "mint-key-undecodable": ["pow-mint", "--puzzle", "sha256", "--work", "10", "--key", "\udcff\udcfe" + "a" * 20],
    # pow-mint
    "mint-work-0": ["pow-mint", "--puzzle", "sha256", "--work", "0"] + KEYED,
    "mint-work-nan": ["pow-mint", "--puzzle", "sha256", "--work", "nan"] + KEYED,
    "mint-workers-negative": ["pow-mint", "--puzzle", "sha256", "--workers", "-1"] + KEYED,
    "mint-workers-0": ["pow-mint", "--puzzle", "sha256", "--workers", "0"] + KEYED,
    "mint-no-key": ["pow-mint", "--puzzle", "sha256", "--work", "10"],
    "mint-empty-key": ["pow-mint", "--puzzle", "sha256", "--work", "10", "--key", ""],
    "mint-short-key": ["pow-mint", "--puzzle", "sha256", "--work", "10", "--key", "short"],
    "mint-bits-0": ["pow-mint", "--puzzle", "hashcash", "--bits", "0"],
    "mint-bits-161": ["pow-mint", "--puzzle", "hashcash", "--bits", "161"],
    "mint-subs-0": ["pow-mint", "--puzzle", "sha256", "--pow_subs", "0"] + KEYED,
    "mint-resource-pipe": ["pow-mint", "--puzzle", "sha256", "--work", "10", "--resource", "a|b"] + KEYED,
    "mint-resource-colon": ["pow-mint", "--puzzle", "hashcash", "--bits", "8", "--resource", "a:b"],
    "mint-bad-challenge": ["pow-mint", "--puzzle", "sha256", "--challenge", "pow1|sha256|x"],
    # pow-check
    "check-min-work-nan": ["pow-check", "--solution", "x", "--min_work", "nan"] + KEYED,
    "check-no-key": ["pow-check", "--solution", "x", "--puzzle", "sha256"],
    "check-dev-key": ["pow-check", "--solution", "x", "--key", "insecure-development-key"],
    "check-unicode-stamp": ["pow-check", "--stamp", "1:²:261130:r::a:b", "--bits", "10"],
    "check-solution-is-junk": ["pow-check", "--solution", "pow1|" + "é" * 80, "--puzzle", "sha256"] + KEYED,
    # pow-calibrate
    "calibrate-puzzles-bogus": ["pow-calibrate", "--puzzles", "bogus", "--out", "{out}/t.csv"],
    "calibrate-puzzles-empty": ["pow-calibrate", "--puzzles", ",", "--out", "{out}/t.csv"],
    "calibrate-trials-0": ["pow-calibrate", "--trials", "0", "--out", "{out}/t.csv"],
    "calibrate-trials-negative": ["pow-calibrate", "--trials", "-1", "--out", "{out}/t.csv"],
    "calibrate-max-seconds-nan": ["pow-calibrate", "--max_seconds", "nan", "--out", "{out}/t.csv"],
    "calibrate-out-under-file": ["pow-calibrate", "--puzzles", "sha256", "--trials", "1", "--max_seconds", "0.01",
                                 "--out", "{in}/afile/t.csv"],
    # pow-table
    "table-attacks-strings": ["pow-table", "--calibration", "{in}/paper_cal.csv", "--attacks",
                              "{in}/attacks_strings.csv", "--out", "{out}/t.csv"],
    "table-attacks-header-only": ["pow-table", "--calibration", "{in}/paper_cal.csv", "--attacks",
                                  "{in}/attacks_header.csv", "--out", "{out}/t.csv"],
    "table-attacks-zero-time": ["pow-table", "--calibration", "{in}/paper_cal.csv", "--attacks",
                                "{in}/attacks_zero_time.csv", "--out", "{out}/t.csv"],
    "table-calibration-folder": ["pow-table", "--calibration", "{in}/adir", "--attacks",
                                 "{in}/attacks_zero_time.csv", "--out", "{out}/t.csv"],
    "table-out-under-file": ["pow-table", "--calibration", "{in}/paper_cal.csv", "--attacks",
                             "{in}/attacks_zero_time.csv", "--out", "{in}/afile/t.csv"],
    # cost-separation
    "separation-queries-negative": ["cost-separation", "--queries", "-1", "--out", "{out}/s.csv"],
    "separation-datasets-empty": ["cost-separation", "--datasets", ",", "--out", "{out}/s.csv"],
    "separation-datasets-unknown": ["cost-separation", "--datasets", "nope", "--out", "{out}/s.csv"],
    "separation-sigmas-nan": ["cost-separation", "--sigmas", "nan", "--out", "{out}/s.csv"],
    "separation-out-under-file": ["cost-separation", "--datasets", "mnist-5k", "--out", "{in}/afile/s.csv"],
    # serve, serve-admin, query, sybil, extract --server
    "serve-no-key": ["serve", *SERVE],
    "serve-key-file-readable": ["serve", *SERVE, "--key_file", "{in}/baseline.csv"],
    "serve-dev-key": ["serve", *SERVE, "--key_file", "{in}/dev.key"],
    "serve-hashcash": ["serve", *SERVE, "--key_file", "{in}/server.key", "--puzzle", "hashcash"],
    "serve-baseline-nan": ["serve", *SERVE, "--key_file", "{in}/server.key", "--calibration", "{in}/nan.csv"],
    "serve-state-unknown": ["serve", *SERVE, "--key_file", "{in}/server.key", "--state", "mysql://db"],
    "serve-state-folder-missing": ["serve", *SERVE, "--key_file", "{in}/server.key", "--state",
                                   "sqlite:///{in}/nope/s.db"],
    "serve-port-0": ["serve", *SERVE, "--port", "0"],
    "admin-init-no-key-file": ["serve-admin", "init", "--state", "sqlite:///{out}/s.db"],
    "admin-init-key-exists": ["serve-admin", "init", "--key_file", "{in}/server.key", "--state", "sqlite:///{out}/s.db"],
    "admin-add-user-bad-name": ["serve-admin", "add-user", "bad name!", "--state", "sqlite:///{out}/s.db"],
    "admin-revoke-no-name": ["serve-admin", "revoke", "--state", "sqlite:///{out}/s.db"],
    "admin-state-not-sqlite": ["serve-admin", "list-users", "--state", "sqlite:///{in}/notes.txt"],
    "query-input-missing": ["query", "--server", "http://127.0.0.1:9", "--api_key", "k", "--input", "{in}/nope.npy"],
    "query-input-not-npy": ["query", "--server", "http://127.0.0.1:9", "--api_key", "k", "--input", "{in}/notes.txt"],
    "query-out-is-input": ["query", "--server", "http://127.0.0.1:9", "--api_key", "k", "--input", "{in}/x.npy",
                           "--out", "{in}/x.npy"],
    "query-no-api-key": ["query", "--server", "http://127.0.0.1:9", "--input", "{in}/x.npy"],
    "query-bad-url": ["query", "--server", "ftp://host", "--api_key", "k", "--input", "{in}/x.npy"],
    "query-no-server": ["query", "--server", "http://127.0.0.1:9", "--api_key", "k", "--input", "{in}/x.npy",
                        "--workers", "1"],
    "query-api-key-non-ascii": ["query", "--server", "http://127.0.0.1:9", "--api_key", "pk_\u00e9", "--input",
                                "{in}/x.npy"],
    "query-url-invalid": ["query", "--server", "http://[::1", "--api_key", "k", "--input", "{in}/x.npy"],
    "query-out-exists": ["query", "--server", "http://127.0.0.1:9", "--api_key", "k", "--input", "{in}/x.npy",
                         "--out", "{in}/notes.txt"],
    "admin-init-bad-state": ["serve-admin", "init", "--key_file", "{out}/new.key", "--state", "mysql://db"],
    "serve-key-file-empty": ["serve", *SERVE, "--key_file", "{in}/empty.key"],
    "extract-server-bad-url": EXTRACT + ["--server", "ftp://host", "--api_key", "k"],
    "sybil-budget-below-accounts": ["sybil", "--calibration", "{in}/baseline.csv", "--victim_path", "{in}/victim.pt",
                                    "--budget", "64", "--accounts", "128", "--batches", "64", "--out", "{out}/s.csv"],
    "sybil-server-url": ["sybil", "--calibration", "{in}/baseline.csv", "--victim_path", "{in}/victim.pt",
                         "--server", "http://127.0.0.1:9", "--out", "{out}/s.csv"],
    "sybil-batches-zero": ["sybil", "--calibration", "{in}/baseline.csv", "--batches", "0", "--out", "{out}/s.csv"],
    "sybil-batches-over-256": ["sybil", "--calibration", "{in}/baseline.csv", "--batches", "512", "--out", "{out}/s.csv"],
    "sybil-modes-bogus": ["sybil", "--calibration", "{in}/baseline.csv", "--modes", "bogus", "--out", "{out}/s.csv"],
    "sybil-paper-mode": ["sybil", "--calibration", "{in}/baseline.csv", "--victim_path", "{in}/victim.pt",
                         "--calibration_mode", "paper", "--out", "{out}/s.csv"],
    "serve-query-share-1": ["serve", *SERVE, "--key_file", "{in}/server.key", "--query_share", "1"],
    "serve-query-quantile-nan": ["serve", *SERVE, "--key_file", "{in}/server.key", "--query_quantile", "nan"],
    "serve-query-smoothing-negative": ["serve", *SERVE, "--key_file", "{in}/server.key", "--query_smoothing", "-1"],
    "serve-account-factor-below-1": ["serve", *SERVE, "--key_file", "{in}/server.key", "--account_factor", "0.5"],
    "serve-paper-mode": ["serve", *SERVE, "--key_file", "{in}/server.key", "--calibration_mode", "paper"],
    "serve-log-costs-bogus": ["serve", *SERVE, "--key_file", "{in}/server.key", "--log_costs", "bogus"],
    "separation-no-victims": ["cost-separation", "--datasets", "mnist-5k", "--victim_dir", "{in}/adir",
                              "--queries", "10", "--out", "{out}/s.csv"],
}

#: what each case's error line must say: proof that it failed where its name says
NEEDLES = {
    'calibrate-max-seconds-nan': '--max_seconds: the value must be a finite number',
    'calibrate-out-under-file': 'is a file, not a folder',
    'calibrate-puzzles-bogus': "unknown puzzle 'bogus'",
    'calibrate-puzzles-empty': 'needs at least one puzzle',
    'calibrate-trials-0': '--trials: the value must be a whole number >= 1',
    'calibrate-trials-negative': '--trials: the value must be a whole number >= 1',
    'check-dev-key': 'public development key',
    'check-min-work-nan': '--min_work: the value must be a finite number',
    'check-no-key': 'no HMAC key',
    'check-solution-is-junk': 'rejected: malformed',
    'check-unicode-stamp': 'rejected: malformed',
    'demo-budget-0': '--budget: the value must be a whole number >= 1',
    'demo-out-under-file': 'is a file, not a folder',
    'demo-victim-text': 'cannot be read',
    'extract-base-nan': '--base: the value must be a finite number > 1',
    'extract-baseline-duplicate-queries': 'strictly increasing',
    'extract-baseline-header-only': 'header but no rows',
    'extract-baseline-huge': 'too large to calibrate',
    'extract-baseline-nan': 'non-numeric or infinite',
    'extract-baseline-zero-time': 'query time of 0 s',
    'extract-batch-size-0': '--batch_size: the value must be a whole number >= 1',
    'extract-budget-0': '--budget: the value must be a whole number >= 1',
    'extract-budget-huge': 'lower --budget',
    'extract-calibration-folder': 'is not a file',
    'extract-delta-1': '--delta: the value must be a finite number > 0 and < 1',
    'extract-max-factor-inf': '--max_factor: the value must be a finite number',
    'extract-out-under-file': 'is a file, not a folder',
    'extract-pow-budget-nan': '--pow_budget: the value must be a finite number',
    'extract-query-batch-0': '--query_batch: the value must be a whole number >= 1',
    'extract-seed-negative': '--seed: the value must be a whole number >= 0',
    'extract-sigma-inf': '--sigma: the value must be a finite number >= 0.001 and <= 1e+06, got inf',
    'extract-sigma-nan': '--sigma: the value must be a finite number >= 0.001 and <= 1e+06, got nan',
    'extract-timing-table-nan': 'recreate it with pow-calibrate',
    'extract-tolerance-nan': '--tolerance: the value must be a finite number',
    'extract-unknown-mode': "unknown mode 'steal'; valid modes: copycat, dfme, entropy",
    'extract-victim-text': 'cannot be read',
    'extract-workers-negative': '--workers: the value must be a whole number >= 1',
    'mint-bad-challenge': '--challenge is not a challenge',
    'mint-bits-0': '--bits: the value must be a whole number >= 1 and <= 160',
    'mint-bits-161': '--bits: the value must be a whole number >= 1 and <= 160',
    'mint-empty-key': 'no HMAC key',
    'mint-no-key': 'no HMAC key',
    'mint-resource-colon': "may contain ':'",
    'mint-resource-pipe': 'the resource must be',
    'mint-short-key': 'use at least 16',
    'mint-subs-0': '--pow_subs: the value must be a whole number >= 1',
    'mint-work-0': '--work: the value must be a finite number >= 1',
    'mint-work-nan': '--work: the value must be a finite number >= 1',
    'mint-workers-0': '--workers: the value must be a whole number >= 1',
    'mint-workers-negative': '--workers: the value must be a whole number >= 1',
    'pow-time-base-nan': '--base: the value must be a finite number > 1',
    'pow-time-bases-empty': 'needs at least one base',
    'pow-time-calibration-folder': 'is not a file',
    'pow-time-header-only-log': 'header but no rows',
    'pow-time-huge-baseline': 'too large to calibrate',
    'pow-time-negative-queries': 'non-negative and strictly increasing',
    'pow-time-out-is-log': 'no command writes over its inputs',
    'pow-time-out-under-file': 'is a file, not a folder',
    'privacy-dataset-unknown': "invalid choice: 'nope'",
    'privacy-out-under-file': 'is a file, not a folder',
    'privacy-sigma-nan': '--sigma: the value must be a finite number >= 0.001 and <= 1e+06, got nan',
    'privacy-votes-1e400': 'counts must be finite',
    'privacy-votes-folder': 'is not a file',
    'privacy-votes-inf': 'counts must be finite',
    'separation-datasets-empty': 'needs at least one dataset',
    'separation-datasets-unknown': "unknown dataset 'nope'",
    'separation-no-victims': 'train-victim --dataset mnist-5k',
    'separation-out-under-file': 'is a file, not a folder',
    'separation-queries-negative': '--queries: the value must be a whole number >= 1',
    'separation-sigmas-nan': '--sigmas: the value must be a finite number >= 0.001',
    'table-attacks-header-only': 'header but no rows',
    'table-attacks-strings': 'must be finite numbers in every row',
    'table-attacks-zero-time': 'end with a time of 0 s',
    'table-calibration-folder': 'is not a file',
    'table-out-under-file': 'is a file, not a folder',
    'train-epochs-negative': '--epochs: the value must be a whole number >= 1',
    'train-epochs-zero': '--epochs: the value must be a whole number >= 1',
    'train-existing-file': 'Pass --overwrite',
    'train-under-file': 'is a file, not a folder',
    'train-unknown-dataset': "invalid choice: 'nope'",
    "extract-lr-huge": "--lr: the value must be a finite number > 0 and <= 10",
    "extract-timing-paper-scrypt": "the paper's timing table is for hashcash",
    "extract-calibration-is-own-log": "is the run's own log.csv",
    "extract-victim-is-own-stolen": "is the run's own stolen.pt",
    "train-lr-huge": "--lr: the value must be a finite number > 0 and <= 10",
    "train-dangling-link": "Pass --overwrite",
    "privacy-sigma-tiny": "--sigma: the value must be a finite number >= 0.001",
    "pow-time-record-is-calibration": "is the file given as --calibration",
    "pow-time-bool-queries": "must be numbers",
    "pow-time-fractional-queries": "whole numbers",
    "pow-time-huge-queries": "whole numbers of at most",
    "pow-time-duplicate-columns": "more than once",
    "table-out-is-calibration": "is the file given as --calibration 1",
    "calibrate-out-is-the-plot": "also where --out goes",
    "mint-key-undecodable": "not valid text",
    "demo-victim-inside-out": "lies inside --out_dir",
    "separation-out-is-victim": "is the file given as the victim of mnist-5k",
    "extract-device-meta": "is not supported",
    "extract-ood-pool-is-victim-data": "is the victim's own data",
    "extract-jacobian-budget-below-seed": "raise --budget to at least 150",
    "extract-dfme-budget-below-iteration": "one dfme iteration at --query_batch 64 costs 448 queries",
    "extract-dfme-directions-0": "--dfme_directions must be a whole number >= 1",
    "extract-dfme-epsilon-nan": "--dfme_epsilon: the value must be a finite number",
    "extract-mixmatch-labels-whole-pool": "would label all 1500 pool images",
    "extract-mixmatch-t-0": "--mixmatch_t must be a finite number >= 0.01",
    "extract-pate-no-teachers": "python main.py train-teachers --dataset mnist-5k",
    "extract-pate-teachers-text": "it is corrupt or not a teacher file",
    "extract-pate-sigma-nan": "--pate_sigma: the value must be a finite number",
    "teachers-exists": "train-teachers never replaces a file unasked",
    "summarize-no-runs": "holds no runs",
    "summarize-priced-is-calibration": "is the file given as --calibration",
    "summarize-negative-time": "cost and time must be non-negative",
    "summarize-no-accuracy": "accuracy must be a percentage",
    "extract-other-mode-flag-out-of-range": "--dfme_epsilon must be a finite number",
    "extract-dfme-too-many-directions": "lower --dfme_directions or --query_batch",
    "summarize-wrong-measure": "pate_cost",
    "teachers-num-models-0": "--num_models: the value must be a whole number >= 1",
    "teachers-too-many": "--num_models must lie in 1..3000",
    "serve-no-key": "the server needs an HMAC key",
    "serve-key-file-readable": "can be read by other users",
    "serve-dev-key": "public development key",
    "serve-hashcash": "pass --puzzle scrypt or sha256",
    "serve-baseline-nan": "non-numeric or infinite",
    "serve-state-unknown": "unknown state database 'mysql://db'",
    "serve-state-folder-missing": "does not exist; create it first",
    "serve-port-0": "--port: the value must be a whole number >= 1",
    "admin-init-no-key-file": "needs --key_file",
    "admin-init-key-exists": "never overwritten",
    "admin-add-user-bad-name": "add-user needs a NAME",
    "admin-revoke-no-name": "revoke needs the user's NAME",
    "admin-state-not-sqlite": "is not usable as this server's state database",
    "query-input-missing": "is not a file",
    "query-input-not-npy": "is not a plain .npy array",
    "query-out-is-input": "no command writes over its inputs",
    "query-no-api-key": "no API key",
    "query-bad-url": "must be an http:// or https:// URL",
    "query-no-server": "cannot reach the server at http://127.0.0.1:9",
    "extract-server-bad-url": "must be an http:// or https:// URL",
    "query-api-key-non-ascii": "printable ASCII",
    "query-url-invalid": "is not a valid URL",
    "query-out-exists": "exists already",
    "admin-init-bad-state": "unknown state database",
    "serve-key-file-empty": "is empty",
    "sybil-budget-below-accounts": "raise --budget to at least 8192",
    "sybil-server-url": "pass --server local",
    "sybil-batches-zero": "--batches: the value must be a whole number >= 1",
    "sybil-batches-over-256": "--batches: the value must be a whole number >= 1 and <= 256",
    "sybil-modes-bogus": "unknown mode 'bogus'",
    "sybil-paper-mode": "with --calibration_mode relative",
    "serve-query-share-1": "--query_share: the value must be a finite number >= 0 and < 1",
    "serve-query-quantile-nan": "--query_quantile: the value must be a finite number",
    "serve-query-smoothing-negative": "--query_smoothing: the value must be a finite number >= 0",
    "serve-account-factor-below-1": "--account_factor: the value must be a finite number >= 1",
    "serve-paper-mode": "with --calibration_mode relative",
    "serve-log-costs-bogus": "unknown cost measure 'bogus'",
}


def snapshot(root: Path) -> dict:
    return {p.relative_to(root): ("link", str(p.readlink())) if p.is_symlink()
            else hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def workspace(victim_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    inputs = root / "in"
    inputs.mkdir()
    (inputs / "adir").mkdir()
    for name, text in FILES.items():
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        (inputs / name).write_text(text)
    for name, text in (("server.key", "ab" * 32 + "\n"), ("dev.key", "insecure-development-key\n"),
                       ("empty.key", "")):
        (inputs / name).write_text(text)
        (inputs / name).chmod(0o600)
    import numpy as np
    np.save(inputs / "x.npy", np.zeros((2, 1, 28, 28), dtype=np.uint8))
    shutil.copy(victim_path, inputs / "victim.pt")
    shutil.copy(victim_path, inputs / "runlike" / "stolen.pt")
    shutil.copy(victim_path, inputs / "runlike" / "mnist-5k-victim.pt")
    (inputs / "dangling").symlink_to(root / "nowhere")
    (root / "out").mkdir()
    return root


def test_every_case_names_its_error():
    assert set(NEEDLES) == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly(workspace, case, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("POW_SECRET", raising=False)
    monkeypatch.delenv("POW_API_KEY", raising=False)
    argv = [a.replace("{in}", str(workspace / "in")).replace("{out}", str(workspace / "out")) for a in CASES[case]]
    before = snapshot(workspace)
    try:
        code = entry.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert "Traceback" not in err
    assert sum("error:" in line for line in err.splitlines()) == 1, err
    assert NEEDLES[case] in err, err
    assert snapshot(workspace) == before, "a failed command left a new or changed file"
