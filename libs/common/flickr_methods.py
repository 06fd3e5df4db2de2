"""What each Flickr REST method needs: the permission level, and whether it writes or searches.

One table for the worker (which calls are writes, which are searches) and the
sandbox (which calls need a token with which perms). Levels follow Flickr's
reflection `requiredperms`: 0 none, 1 read, 2 write, 3 delete. Rows marked
"§5" come from docs/flickr-api.md §5; the others are their siblings, by the same
reflection data. A method missing from the table counts as a write: it is
safer to treat an unknown call as one that changes something.
"""

from __future__ import annotations

from typing import Final

NONE: Final = "none"
READ: Final = "read"
WRITE: Final = "write"
DELETE: Final = "delete"

# delete ⊃ write ⊃ read ⊃ none (flickrapi `FlickrAccessToken.has_level`).
PERM_LEVELS: Final[dict[str, int]] = {NONE: 0, READ: 1, WRITE: 2, DELETE: 3}

METHOD_PERMS: Final[dict[str, str]] = {
    # test (§5)
    "flickr.test.echo": NONE,
    "flickr.test.login": READ,
    "flickr.test.null": READ,
    # auth
    "flickr.auth.oauth.checkToken": NONE,  # §5: needs a signature, not a login
    "flickr.auth.oauth.getAccessToken": NONE,
    # people
    "flickr.people.getInfo": NONE,  # §5
    "flickr.people.findByUsername": NONE,
    "flickr.people.findByEmail": NONE,
    "flickr.people.getPhotos": NONE,
    "flickr.people.getPublicPhotos": NONE,
    "flickr.people.getPhotosOf": NONE,
    "flickr.people.getUploadStatus": READ,
    "flickr.urls.lookupUser": NONE,
    # photos: reads
    "flickr.photos.search": NONE,  # §5
    "flickr.photos.getRecent": NONE,
    "flickr.photos.getInfo": NONE,  # §5
    "flickr.photos.getSizes": NONE,  # §5
    "flickr.photos.getExif": NONE,
    "flickr.photos.getFavorites": NONE,
    "flickr.photos.getContext": NONE,
    "flickr.photos.getAllContexts": NONE,
    "flickr.photos.getPerms": READ,
    "flickr.photos.getCounts": READ,
    "flickr.photos.getNotInSet": READ,
    "flickr.photos.getUntagged": READ,
    "flickr.photos.getContactsPhotos": READ,
    "flickr.photos.recentlyUpdated": READ,
    "flickr.photos.comments.getList": NONE,
    "flickr.photos.geo.getLocation": NONE,
    "flickr.photos.licenses.getInfo": NONE,
    "flickr.photos.upload.checkTickets": NONE,  # §5
    # photos: writes
    "flickr.photos.setMeta": WRITE,  # §5
    "flickr.photos.setTags": WRITE,
    "flickr.photos.addTags": WRITE,
    "flickr.photos.removeTag": WRITE,
    "flickr.photos.setDates": WRITE,
    "flickr.photos.setPerms": WRITE,
    "flickr.photos.setSafetyLevel": WRITE,
    "flickr.photos.setContentType": WRITE,
    "flickr.photos.comments.addComment": WRITE,
    "flickr.photos.comments.editComment": WRITE,
    "flickr.photos.comments.deleteComment": WRITE,
    "flickr.photos.geo.setLocation": WRITE,
    "flickr.photos.geo.removeLocation": WRITE,
    "flickr.photos.licenses.setLicense": WRITE,
    "flickr.photos.notes.add": WRITE,
    "flickr.photos.notes.edit": WRITE,
    "flickr.photos.notes.delete": WRITE,
    "flickr.photos.transform.rotate": WRITE,
    "flickr.photos.delete": DELETE,  # §5
    # photosets
    "flickr.photosets.getList": NONE,  # §5
    "flickr.photosets.getPhotos": NONE,  # §5
    "flickr.photosets.getInfo": NONE,
    "flickr.photosets.getContext": NONE,
    "flickr.photosets.create": WRITE,
    "flickr.photosets.editMeta": WRITE,
    "flickr.photosets.editPhotos": WRITE,
    "flickr.photosets.addPhoto": WRITE,
    "flickr.photosets.removePhoto": WRITE,
    "flickr.photosets.orderSets": WRITE,
    "flickr.photosets.delete": WRITE,
    # contacts and favorites
    "flickr.contacts.getList": READ,  # §5
    "flickr.contacts.getPublicList": NONE,
    "flickr.favorites.getList": NONE,  # §5
    "flickr.favorites.getPublicList": NONE,
    "flickr.favorites.add": WRITE,
    "flickr.favorites.remove": WRITE,
    # groups and tags
    "flickr.groups.search": NONE,
    "flickr.groups.getInfo": NONE,
    "flickr.groups.pools.getPhotos": NONE,
    "flickr.groups.pools.add": WRITE,
    "flickr.groups.pools.remove": WRITE,
    "flickr.tags.getListPhoto": NONE,
    "flickr.tags.getListUser": NONE,
}


def required_perm(method: str) -> str:
    """The permission a token needs for `method`: none, read, write or delete (unknown: write)."""
    return METHOD_PERMS.get(method, WRITE)


def is_write(method: str) -> bool:
    """True for methods that change data (write or delete perms), and for unknown methods."""
    return PERM_LEVELS[required_perm(method)] >= PERM_LEVELS[WRITE]


def is_search(method: str) -> bool:
    """True for search-like listings: any method with "search" in its name, and photos.getRecent."""
    return "search" in method.lower() or method == "flickr.photos.getRecent"


def perm_allows(granted: str, required: str) -> bool:
    """True when a token granted `granted` may call a method requiring `required` (unknown perms: no)."""
    return PERM_LEVELS.get(granted, -1) >= PERM_LEVELS.get(required, len(PERM_LEVELS))
