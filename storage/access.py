"""Who may read what the filesystem driver stores.

A web server in front (deploy/nginx.conf) sends blob files itself, as a
user of its own (nginx's default is `nobody`, in none of the registry's
groups), so stored files and folders get their modes whatever the umask:
readable by anyone, or with a group (NIXERY_STORAGE_GROUP), by that group
only.  Nothing is writable but by the registry's user.
"""
from __future__ import annotations

import logging
import os
import stat

logger = logging.getLogger(__name__)

FILE_MODE, FOLDER_MODE = 0o644, 0o755
GROUP_FILE_MODE, GROUP_FOLDER_MODE = 0o640, 0o2750   # setgid: new entries keep the group


class Access:
    """The modes, and the group (a gid, or None), of what is stored."""

    def __init__(self, group: int | None = None):
        self.group = group
        self.file_mode = FILE_MODE if group is None else GROUP_FILE_MODE
        self.folder_mode = FOLDER_MODE if group is None else GROUP_FOLDER_MODE

    def makedirs(self, path):
        """Create `path` and the folders above it that are missing (the root
        and its parents too), each with the folder mode."""
        missing = []
        while not os.path.isdir(path) and path != os.path.dirname(path):
            missing.append(path)
            path = os.path.dirname(path)
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
            except FileExistsError:
                continue  # made meanwhile by another writer, with these modes too
            self.own(folder, self.folder_mode)

    def own(self, path, mode, fd=None):
        """Give what the driver made its mode (and group), past the umask."""
        if self.group is not None:
            os.chown(fd if fd is not None else path, -1, self.group)
        os.chmod(fd if fd is not None else path, mode)

    def open_up(self, f, path, st):
        """Give a stored file `f` (`st` its stat) the file mode and group if
        it has others: written by an earlier version (0600) or under another
        setting, the web server in front could not send it."""
        if st.st_mode & 0o7777 == self.file_mode and (
                self.group is None or st.st_gid == self.group):
            return
        try:
            self.own(path, self.file_mode, f.fileno())
        except OSError as e:
            logger.warning("%s has mode %o, and it cannot be changed to %o: %s", path,
                           st.st_mode & 0o7777, self.file_mode, e.strerror)

    def closed_folder(self, root) -> str | None:
        """The first folder on the way to `root` that a web server sending
        the files as another user cannot pass (with a group: that group's
        members), or None."""
        path = root
        folders = []
        while True:
            folders.append(path)
            if path == os.path.dirname(path):
                break
            path = os.path.dirname(path)
        for folder in reversed(folders):
            try:
                st = os.stat(folder)
            except OSError:
                return folder
            if st.st_mode & stat.S_IXOTH:
                continue
            if self.group is not None and st.st_gid == self.group and st.st_mode & stat.S_IXGRP:
                continue
            return folder
        return None
