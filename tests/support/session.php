<?php
// A PHP page using mod_rsession instead of PHP's own sessions.
parse_str($_SERVER['RSESSION_DATA'] ?? '', $data);
$visits = (int)($data['php_visits'] ?? 0) + 1;
header('X-RSession: set php_visits=' . $visits);
if (isset($_GET['user'])) {
    header('X-RSession: set user=' . rawurlencode($_GET['user']), false);
}
header('Content-Type: text/plain');
echo 'id=' . ($_SERVER['RSESSION_ID'] ?? '(none)') . "\n";
echo 'dir=' . ($_SERVER['RSESSION_DIR'] ?? '(none)') . "\n";
echo 'php_visits=' . $visits . "\n";
echo 'user=' . ($data['user'] ?? '') . "\n";
