<?php
// Run by a php-fpm pool under its own user, a member of
// RSessionScratchGroup: writes into the session's scratch directory.
$dir = $_SERVER['RSESSION_DIR'] ?? '';
header('Content-Type: text/plain');
switch ($_GET['do'] ?? '') {
case 'write':
    $ok = file_put_contents("$dir/upload.txt", "from the pool") !== false
        && mkdir("$dir/private")
        && file_put_contents("$dir/private/secret.txt", "only mine") !== false
        && mkdir("$dir/private/deeper")
        && touch("$dir/private/deeper/f")
        && chmod("$dir/private/deeper", 0500)
        && chmod("$dir/private", 0700);
    echo 'wrote=' . ($ok ? 'yes' : 'no: ' . (error_get_last()['message'] ?? '?')) . "\n";
    header('X-RSession: set wrote=1');
    break;
case 'regenerate':
    header('X-RSession: regenerate');
    break;
case 'end':
    header('X-RSession: invalidate');
    break;
}
echo 'id=' . ($_SERVER['RSESSION_ID'] ?? '') . "\n";
echo 'dir=' . $dir . "\n";
