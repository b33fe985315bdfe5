"""Reading archives (read side, Ray-free): one object and its GOPs (`reader`), the manifest's parts
(`manifest`, `manifest_layout`, `manifest_videos`), one video found in a few requests (`locate`),
`restore`, `inspect`, the objects a thaw concerns (`thaw_plan`), fixity (`fixity`), and an archived
video as the source of a migration (`archived_source`)."""
